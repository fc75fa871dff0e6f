"""Update batches of the two training stages: the warm start's assembled on the host from data
batches, GRPO's built on device from the rollout's own arrays (`grpo_pass1`, `grpo_pass2`).

Both stages feed `rl.step.UpdateStep` batches in its layout (`pack_batch`: left-padded prompt,
right-padded completion, `completion_mask`), with fixed shapes so each compiles once:
* pass-1 rows (image prompts): the pass-1 prompt bucket, completions padded to
  `pass1.max_new_tokens`; the image as `pixel_values [rows, patches, patch_dim]` when the vision
  tower trains (`vision_plan` of one micro-batch's images in `unsplit`), else as precomputed
  `image_features [rows, tokens, hidden]`;
* pass-2 rows (text-only caption prompts), when trained: the same entries prefixed `pass2_`,
  their positions row-first (`pass2_positions [rows, 3, T]`, so micro-batches split them like
  every other entry), completions padded to `pass2.max_new_tokens`; `two_pass_loss` sums the
  loss of both row sets, so one step's mean runs over the sequences (or tokens) of both passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbiqa.models.qwen2_5_vl import vision_plan
from jaxbiqa.processing import pad_rows
from jaxbiqa.rl.losses import LossTerms
from jaxbiqa.rl.step import LossFn, pack_batch
from jaxbiqa.rollout.batch import PromptBatch, prepare_prompts

PASS2 = "pass2_"


# ---------------------------------------------------------------- the two-pass loss

def pass2_part(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The pass-2 rows of a two-pass batch in the plain layout (positions back to `[3, rows, T]`)."""
    part = {k[len(PASS2):]: v for k, v in batch.items() if k.startswith(PASS2)}
    if "positions" in part:
        part["positions"] = jnp.swapaxes(part["positions"], 0, 1)
    return part


def pass1_part(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith(PASS2)}


def two_pass_loss(loss_fn: LossFn) -> LossFn:
    """`loss_fn` on the pass-1 rows plus `loss_fn` on the `pass2_` rows (when the batch has them):
    sums and denominators add, so the step divides once by the count over both passes."""

    def loss(model, batch, key):
        first = loss_fn(model, pass1_part(batch), None if key is None else jax.random.fold_in(key, 1))
        if not any(k.startswith(PASS2) for k in batch):
            return first
        second = loss_fn(model, pass2_part(batch), None if key is None else jax.random.fold_in(key, 2))
        metrics = {name: tuple(a + b for a, b in zip(pair, second.metrics[name])) if name in second.metrics else pair
                   for name, pair in first.metrics.items()}
        return LossTerms(first.total + second.total, first.denominator + second.denominator, metrics)

    return loss


def add_pass2(batch: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """`batch` with the plain-layout pass-2 rows `part` added under the `pass2_` prefix."""
    out = dict(batch)
    for key, value in part.items():
        out[PASS2 + key] = value.swapaxes(0, 1) if key == "positions" else value  # numpy or device arrays
    return out


# ---------------------------------------------------------------- images

def same_image_grid(image_grid_thw: np.ndarray) -> np.ndarray:
    """The one `(t, h, w)` every image of a batch shares (the pipeline batches images of one size)."""
    grid = np.asarray(image_grid_thw).reshape(-1, 3)
    if not (grid == grid[0]).all():
        raise ValueError(f"the images of a batch differ in size (image_grid_thw {np.unique(grid, axis=0).tolist()}); "
                         "the trainer needs batches of one image size (data.pipeline.BatchPlan plans them)")
    return grid[0]


def record_rows(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The per-record fields (1-D entries) of a collated data batch, one dict per record."""
    fields = {k: v for k, v in batch.items() if np.ndim(v) == 1}
    rows = len(next(iter(fields.values())))
    return [{k: v[i] for k, v in fields.items()} for i in range(rows)]


class VisionPlans:
    """Vision plans of `images` images of one grid (a micro-batch's share), cached per (grid, images)."""

    def __init__(self, vision_config):
        self.vision_config = vision_config
        self._plans: dict[tuple[tuple[int, ...], int], Any] = {}

    def __call__(self, grid: np.ndarray, images: int):
        key = (tuple(int(v) for v in grid), images)
        if key not in self._plans:
            self._plans[key] = vision_plan(np.repeat(grid[None], images, 0), self.vision_config)
        return self._plans[key]


def micro_rows(rows: int, optim) -> int:
    """Rows per accumulation step of an update of `rows` rows under `optim.micro_batch_size`."""
    return optim.micro_batch_size if optim.micro_batch_size and optim.micro_batch_size < rows else rows


def prompt_batch(prepare: Callable[..., PromptBatch], data: Mapping[str, np.ndarray]) -> PromptBatch:
    """The pass-1 `PromptBatch` of a data batch (`Pass1Preprocess` entries stacked by the pipeline)."""
    pixels = np.asarray(data["pixel_values"])
    return prepare(data["input_ids"], data["attention_mask"], pixels.reshape(-1, pixels.shape[-1]),
                   np.asarray(data["image_grid_thw"]).reshape(-1, 3))


# ---------------------------------------------------------------- warm start (SFT)

def encode_completions(texts: Sequence[str], encode: Callable[[str], list[int]], eos_id: int,
                       length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, valid) `[n, length]`: each text's tokens then the EOS, right-padded with the EOS id;
    longer ones are cut to `length` (returned: how many were cut)."""
    rows, cut = [], 0
    for text in texts:
        ids = list(encode(text)) + [eos_id]
        if len(ids) > length:
            ids, cut = ids[:length], cut + 1
        rows.append(ids)
    ids, valid = pad_rows(rows, eos_id, length, left=False)
    return ids, valid, cut


def sft_pass1(prompts: PromptBatch, completions: np.ndarray, valid: np.ndarray, eos_ids: Sequence[int],
              pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Pass-1 SFT rows: image prompts and reference completions, `pixel_values [rows, patches, dim]`."""
    batch = pack_batch(prompts.input_ids, prompts.attention_mask, completions, eos_ids=eos_ids,
                       completion_valid=valid, prompt_positions=prompts.positions, rope_deltas=prompts.rope_deltas)
    batch["pixel_values"] = np.asarray(pixel_values, np.float32)
    return batch


def text_rows(model_config, prompts: Sequence[Sequence[int]], completions: np.ndarray, valid: np.ndarray,
              eos_ids: Sequence[int], prompt_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Text-only rows (pass 2): prompts left-padded to `prompt_length`, plain layout."""
    ids, mask = pad_rows(prompts, pad_id, prompt_length)
    text = prepare_prompts(model_config, ids, mask, buckets=(prompt_length,), pad_token_id=pad_id)
    return pack_batch(text.input_ids, text.attention_mask, completions, eos_ids=eos_ids, completion_valid=valid)


# ---------------------------------------------------------------- GRPO

def repeat_prompts(prompts: PromptBatch, times: int) -> PromptBatch:
    """Each prompt row repeated `times` times (rows b * times + g), as the sampler repeats them."""
    return PromptBatch(jnp.repeat(prompts.input_ids, times, 0), jnp.repeat(prompts.attention_mask, times, 0),
                       jnp.repeat(prompts.positions, times, 1), jnp.repeat(prompts.rope_deltas, times, 0))


def completion_valid(lengths: jax.Array, width: int, keep: jax.Array | None = None) -> jax.Array:
    """int32 `[rows, width]`: 1 on each row's first `lengths` tokens (0 on rows where `keep` is False)."""
    valid = jnp.arange(width)[None, :] < jnp.asarray(lengths)[:, None]
    if keep is not None:
        valid &= jnp.asarray(keep, bool)[:, None]
    return valid.astype(jnp.int32)


def cut_at_placeholders(tokens: jax.Array, valid: jax.Array, placeholder_ids: Sequence[int],
                        pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Completions cut before the first image / video placeholder id the policy generated.

    The model puts image features at every placeholder id of `input_ids`, so a sampled one would
    take a feature meant for a later image (shifting every row after it) instead of being read as
    the token the sampler embedded. Such a token and what follows are masked out of the update and
    replaced by `pad_id`; returns (tokens, valid, rows cut).
    """
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
    hit = jnp.isin(tokens, jnp.asarray(placeholder_ids, tokens.dtype).reshape(-1)) & (valid > 0)
    after = jnp.cumsum(hit, axis=1) > 0
    return jnp.where(after, pad_id, tokens), jnp.where(after, 0, valid), hit.any(axis=1).sum()


@functools.partial(jax.jit, static_argnames=("group", "eos_ids", "placeholder_ids", "pad_id"))
def grpo_pass1(prompts: PromptBatch, tokens: jax.Array, lengths: jax.Array, *, group: int,
               eos_ids: tuple[int, ...], placeholder_ids: tuple[int, ...] = (), pad_id: int = 0
               ) -> tuple[dict[str, jax.Array], jax.Array]:
    """Pass-1 GRPO rows built on device from the rollout's own arrays (the prompts repeated `group`
    times, the sampled tokens), and how many were cut at a generated placeholder (`cut_at_placeholders`)."""
    rows = repeat_prompts(prompts, group)
    valid = completion_valid(lengths, tokens.shape[1])
    tokens, valid, cut = cut_at_placeholders(tokens, valid, placeholder_ids, pad_id)
    batch = pack_batch(rows.input_ids, rows.attention_mask, tokens, eos_ids=eos_ids, completion_valid=valid,
                       prompt_positions=rows.positions, rope_deltas=rows.rope_deltas)
    return batch, cut


@functools.partial(jax.jit, static_argnames=("eos_ids",))
def grpo_pass2(input_ids: jax.Array, attention_mask: jax.Array, tokens: jax.Array, lengths: jax.Array,
               has_caption: jax.Array, *, eos_ids: tuple[int, ...]) -> dict[str, jax.Array]:
    """Pass-2 GRPO rows (plain layout), on device; rows whose pass 2 was skipped (no caption) have no valid token."""
    return pack_batch(input_ids, attention_mask, tokens, eos_ids=eos_ids,
                      completion_valid=completion_valid(lengths, tokens.shape[1], has_caption))
