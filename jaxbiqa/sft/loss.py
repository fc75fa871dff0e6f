"""Supervised fine-tuning on reference completions: token cross-entropy with the prompt masked.

The batch is the GRPO step's layout (`jaxbiqa.rl.step.pack_batch`): left-padded prompt tokens then
right-padded completion tokens, `completion_mask [B, C]` on the reference completion (its closing
EOS included). The loss is the mean negative log-likelihood over every completion token of the
batch, computed with the chunked log-probs and run by the same jitted `TrainStep` (micro-batch
accumulation, optimizer, non-finite guard) as GRPO.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxbiqa.models.qwen2_5_vl import trainable_filter
from jaxbiqa.rl.losses import LossTerms, masked_sum_count
from jaxbiqa.rl.options import SFTSection
from jaxbiqa.rl.step import Batch, LossFn, TrainStep, completion_logprobs, pack_batch


def sft_loss(chunk_size: int = 256) -> LossFn:
    """`LossFn` of token cross-entropy on the completion tokens (sum over tokens / token count)."""

    def loss(model: nnx.Module, batch: Batch, key: jax.Array | None) -> LossTerms:
        logp = completion_logprobs(model, batch, chunk_size=chunk_size, key=key)
        total, count = masked_sum_count(-logp, batch["completion_mask"])
        return LossTerms(total, count, {})

    return loss


def make_sft_step(model: nnx.Module, section: SFTSection, *, mesh: Mesh | None = None,
                  trainable: nnx.filterlib.Filter | None = None, chunk_size: int = 256) -> TrainStep:
    """The SFT `TrainStep` for `section.steps` steps; trainable by default: the adapters under LoRA,
    else every parameter (the vision tower's unless `section.optim.freeze_vision`)."""
    if trainable is None:
        trainable = trainable_filter(lora=model.config.lora is not None, freeze_vision=section.optim.freeze_vision)
    return TrainStep(model, sft_loss(chunk_size), section.optim, max(section.steps, 1), trainable=trainable,
                     mesh=mesh, logprob_chunk_size=chunk_size)


def pad_sequences(rows: Sequence[Sequence[int]], length: int, pad_id: int, *,
                  left: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int32 `[len(rows), length]`, each row padded on the left or right; a longer row is an error."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        if not len(row):
            continue
        where = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, where], mask[i, where] = row, 1
    return ids, mask


def sft_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, prompt_length: int,
              completion_length: int, pad_id: int, eos_ids: int | Sequence[int]) -> dict[str, np.ndarray]:
    """A text SFT batch from token lists: prompts left-padded to `prompt_length`, reference
    completions (ending with an EOS) right-padded to `completion_length`. For prompts with images,
    call `pack_batch` with the prompt batch's positions and rope deltas (`rollout.prepare_prompts`)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    prompt_ids, prompt_mask = pad_sequences(prompts, prompt_length, pad_id, left=True)
    completion_ids, valid = pad_sequences(completions, completion_length, pad_id, left=False)
    return pack_batch(prompt_ids, prompt_mask, completion_ids, eos_ids=eos_ids, completion_valid=valid)
