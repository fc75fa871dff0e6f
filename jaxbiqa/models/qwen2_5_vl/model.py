"""Qwen2.5-VL for conditional generation: vision tower + decoder + LM head.

`Qwen2_5_VLForConditionalGeneration.__call__` is the jittable core (token ids, M-RoPE positions,
padding mask, optional image patches with their host-computed `VisionPlan`, optional KV cache) and
returns hidden states and/or float32 logits. `forward` is the transformers-shaped convenience
(`input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`, numpy or jax) that computes the
positions and the vision plan on the host. `token_logprobs` scores tokens in sequence chunks so
that no `[B, T, vocab]` float32 tensor is ever materialised, in the forward or backward pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbiqa.models.qwen2_5_vl.config import ModelConfig
from jaxbiqa.models.qwen2_5_vl.lora import Linear
from jaxbiqa.models.qwen2_5_vl.rope import get_rope_index
from jaxbiqa.models.qwen2_5_vl.text import KVCache, TextModel
from jaxbiqa.models.qwen2_5_vl.vision import VisionPlan, VisionTower, vision_plan
from jaxbiqa.sharding import constrain


class ModelOutput(NamedTuple):
    hidden_states: jax.Array  # [B, T, hidden], after the final norm, compute dtype
    logits: jax.Array | None  # [B, T, vocab] float32, None unless asked for
    cache: KVCache | None  # the updated cache when one was passed in


def merge_image_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array,
                         image_token_id: int) -> jax.Array:
    """Put the rows of `features [N, hidden]` at the `<|image_pad|>` tokens of `input_ids`, in row-major order.

    Static shapes: each image token picks feature `k` where `k` counts the image tokens before it
    in the flattened batch (transformers' `masked_scatter`). The caller guarantees there are N of them.
    """
    if features.ndim != 2 or features.shape[1] != embeds.shape[-1]:
        raise ValueError(f"image features of shape {features.shape} do not fit token embeddings of width "
                         f"{embeds.shape[-1]} (vision out_hidden_size must equal the text hidden_size)")
    is_image = input_ids == image_token_id
    index = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
    gathered = features.astype(embeds.dtype)[jnp.clip(index, 0, features.shape[0] - 1)]
    return jnp.where(is_image[..., None], gathered, embeds)


def logits_from_hidden(hidden: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """`hidden [..., hidden] @ kernel [hidden, vocab]` in the compute dtype, accumulated and returned in float32."""
    dtype = jnp.dtype(dtype)
    logits = jnp.einsum("...e,ev->...v", hidden.astype(dtype), kernel.astype(dtype),
                        preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "vocab")) if logits.ndim == 3 else logits


class Qwen2_5_VLForConditionalGeneration(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.visual = VisionTower(config.vision, dtype=config.dtype, param_dtype=config.param_dtype,
                                  remat=config.remat, rngs=rngs)
        self.model = TextModel(config.text, lora=config.lora, dtype=config.dtype, param_dtype=config.param_dtype,
                               remat=config.remat, scan_layers=config.scan_layers, attention=config.attention,
                               attention_block=config.attention_block, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            config.text.hidden_size, config.text.vocab_size, axes=("embed", "vocab"), use_bias=False,
            dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)

    def head_kernel(self) -> jax.Array:
        """The `[hidden, vocab]` output projection (the embedding's transpose when tied)."""
        if self.lm_head is None:
            return self.model.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def compute_logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits `[..., vocab]` of final hidden states."""
        return logits_from_hidden(hidden, self.head_kernel(), self.config.dtype)

    def __call__(self, input_ids: jax.Array, positions: jax.Array, attention_mask: jax.Array,
                 pixel_values: jax.Array | None = None, vision_plan: VisionPlan | None = None,
                 cache: KVCache | None = None, *, image_features: jax.Array | None = None,
                 compute_logits: bool = True, dropout_key: jax.Array | None = None) -> ModelOutput:
        """Run the model on `input_ids [B, T]` with M-RoPE `positions [3, B, T]` and `attention_mask [B, T]`.

        Images: `pixel_values [num_patches, patch_dim]` with `vision_plan` (from `vision_plan(image_grid_thw)`),
        or precomputed `image_features [num_image_tokens, hidden]` (`get_image_features`); their
        rows fill the `<|image_pad|>` tokens in order. `cache` (see `text.init_cache`) makes this a
        prefill or decode step. `compute_logits=False` returns only hidden states (use
        `token_logprobs` for chunked scoring).
        """
        if pixel_values is not None:
            if vision_plan is None:
                raise ValueError("pixel_values needs its vision_plan (vision_plan(image_grid_thw, config.vision))")
            if image_features is not None:
                raise ValueError("pass pixel_values or image_features, not both")
            image_features = self.get_image_features(pixel_values, vision_plan)
        embeds = self.model.embed_tokens(input_ids)
        if image_features is not None:
            embeds = merge_image_features(embeds, input_ids, image_features, self.config.image_token_id)
        hidden, cache = self.model(embeds, positions, attention_mask, cache, dropout_key)
        logits = self.compute_logits(hidden) if compute_logits else None
        return ModelOutput(hidden_states=hidden, logits=logits, cache=cache)

    def get_image_features(self, pixel_values: jax.Array, plan: VisionPlan) -> jax.Array:
        """Vision tower output `[num_image_tokens, hidden]` in `<|image_pad|>` order."""
        return self.visual(pixel_values, plan)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """float32 logits `[B, T, vocab]`, with the arguments of transformers'
        `Qwen2_5_VLForConditionalGeneration.forward` (numpy or jax arrays).

        The M-RoPE positions always come from `get_rope_index` (transformers' `forward` needs
        `mm_token_type_ids` to do the same).
        """
        inputs = prepare_inputs(self.config, input_ids, attention_mask, pixel_values, image_grid_thw)
        return _jit_logits(self, *inputs)


def prepare_inputs(config: ModelConfig, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
    """Host-side preparation for `__call__`: (ids, positions, mask, pixel_values, plan) as arrays."""
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pixel_values and image_grid_thw go together: pass both or neither")
    grid = None if image_grid_thw is None else np.asarray(image_grid_thw)
    positions, _ = get_rope_index(ids, grid, mask, config)
    plan = None
    if grid is not None:
        plan = vision_plan(grid, config.vision)
        n_tokens = int(((ids == config.image_token_id) & (mask > 0)).sum())
        if n_tokens != plan.num_tokens:
            raise ValueError(f"input_ids hold {n_tokens} <|image_pad|> tokens but image_grid_thw "
                             f"{grid.tolist()} gives {plan.num_tokens} image features")
        pixel_values = jnp.asarray(pixel_values)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(positions), jnp.asarray(mask, jnp.int32), pixel_values, plan


@nnx.jit
def _jit_logits(model, input_ids, positions, attention_mask, pixel_values, plan):
    return model(input_ids, positions, attention_mask, pixel_values, plan).logits


def token_logprobs(model: Qwen2_5_VLForConditionalGeneration, hidden_states: jax.Array, targets: jax.Array, *,
                   chunk_size: int = 256, return_entropy: bool = False
                   ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(targets[b, t] | hidden_states[b, t]) `[B, T]` float32, computed chunk by chunk over T.

    To score the tokens of `input_ids`, pass `hidden_states[:, :-1]` and `input_ids[:, 1:]`. Each
    chunk projects to the vocabulary, takes the log-softmax and gathers the targets; the chunk body
    is rematerialised in the backward pass, so at most one `[B, chunk, vocab]` float32 block is
    live. With `return_entropy`, also the entropy of each predictive distribution `[B, T]`.
    """
    b, t, e = hidden_states.shape
    if targets.shape != (b, t):
        raise ValueError(f"targets shape {targets.shape} differs from hidden_states' {(b, t)}")
    chunk = max(1, min(chunk_size, t))
    n = math.ceil(t / chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden_states, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, e).swapaxes(0, 1)
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)

    kernel, dtype = model.head_kernel(), model.config.dtype

    @jax.checkpoint
    def one(args):
        h_chunk, y_chunk = args
        logp = jax.nn.log_softmax(logits_from_hidden(h_chunk, kernel, dtype), axis=-1)
        picked = jnp.take_along_axis(logp, y_chunk[..., None].astype(jnp.int32), axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        return picked, entropy

    picked, entropy = jax.lax.map(one, (h, y))
    picked = picked.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    if not return_entropy:
        return picked
    return picked, entropy.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
