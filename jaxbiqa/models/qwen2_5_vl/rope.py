"""Multimodal rotary position embedding (M-RoPE) of the Qwen2.5-VL decoder.

Every token carries three positions (temporal, height, width). Text tokens have the same value in
all three; image tokens get the (t, h, w) coordinates of their merge unit, offset to follow the
preceding text. The rotary frequency bands are split into `mrope_section` groups and group i takes
its angles from stream i % 3, as transformers does.

`get_rope_index` runs on the host (numpy) because it walks the token sequence; its outputs are
plain arrays that the jitted model consumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbiqa.models.qwen2_5_vl.config import ModelConfig


def mrope_cos_sin(positions: jax.Array, head_dim: int, theta: float,
                  mrope_section: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the M-RoPE angles, float32 `[B, T, head_dim]`, from `positions [3, B, T]`."""
    if 2 * sum(mrope_section) != head_dim:
        raise ValueError(f"mrope_section {tuple(mrope_section)} must sum to head_dim/2 = {head_dim // 2}")
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    # which of the three position streams drives each frequency band
    stream = np.concatenate([np.full(n, i % 3) for i, n in enumerate(mrope_section)])
    band_positions = jnp.moveaxis(positions[stream], 0, -1).astype(jnp.float32)  # [B, T, head_dim/2]
    angles = band_positions * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x [B, T, heads, head_dim]` by `cos`/`sin [B, T, head_dim]` (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x * cos + rotated * sin).astype(x.dtype)


def text_positions(attention_mask: jax.Array, rope_deltas: jax.Array | None = None) -> jax.Array:
    """M-RoPE positions `[3, B, T]` of text tokens: running count of valid tokens, plus `rope_deltas [B, 1]`.

    Padding gets position 0 (before adding the delta), like transformers' generation path. Works on
    numpy or jax arrays; used for text-only prompts and for tokens appended after a prompt.
    """
    xp = jnp if isinstance(attention_mask, jax.Array) else np
    mask = attention_mask.astype(xp.int32)
    pos = xp.where(mask > 0, xp.cumsum(mask, axis=-1) - 1, 0)
    if rope_deltas is not None:
        pos = pos + rope_deltas
    return xp.broadcast_to(pos[None], (3, *pos.shape)).astype(xp.int32)


def _image_positions(start: int, grid_thw: Sequence[int], merge: int) -> np.ndarray:
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + start


def get_rope_index(input_ids: np.ndarray, image_grid_thw: np.ndarray | None, attention_mask: np.ndarray | None,
                   config: ModelConfig, video_grid_thw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions `[3, B, T]` and `rope_deltas [B, 1]` (int32), as transformers' Qwen2.5-VL computes them.

    `input_ids [B, T]` may be left (or right) padded per `attention_mask [B, T]`; padding gets
    position 0. Runs of `<|image_pad|>` tokens take the rows of `image_grid_thw [n_images, 3]` in
    order (a run may hold several adjacent images). `rope_deltas` is what to add to a text token's
    index among the valid tokens to get its position, i.e. the offset for tokens generated later.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    if video_grid_thw is not None or np.any(ids[mask] == config.video_token_id):
        raise NotImplementedError("video inputs are not supported by jaxbiqa's Qwen2.5-VL (images only)")
    grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
    merge = config.vision.spatial_merge_size
    tokens_per_image = grids.prod(-1) // merge**2

    positions = np.zeros((3, *ids.shape), np.int64)
    deltas = np.zeros((ids.shape[0], 1), np.int64)
    next_image = 0
    for b in range(ids.shape[0]):
        row = ids[b][mask[b]]
        is_image = row == config.image_token_id
        pieces, pos, i = [], 0, 0
        while i < len(row):
            if not is_image[i]:
                j = i + 1
                while j < len(row) and not is_image[j]:
                    j += 1
                pieces.append(np.broadcast_to(np.arange(j - i) + pos, (3, j - i)))
                pos += j - i
                i = j
                continue
            if next_image >= len(grids):
                raise ValueError(f"row {b} has more <|image_pad|> runs than the {len(grids)} rows of image_grid_thw")
            n = int(tokens_per_image[next_image])
            if i + n > len(row) or not is_image[i:i + n].all():
                run = int(np.argmin(np.append(is_image[i:], False)))
                raise ValueError(f"row {b}: image {next_image} with grid {grids[next_image].tolist()} needs {n} "
                                 f"<|image_pad|> tokens, found a run of {run}")
            pieces.append(_image_positions(pos, grids[next_image], merge))
            pos += int(max(grids[next_image][1], grids[next_image][2])) // merge
            next_image += 1
            i += n
        row_pos = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        positions[:, b, mask[b]] = row_pos
        deltas[b, 0] = (row_pos.max() + 1 - len(row)) if len(row) else 0
    if next_image != len(grids):
        raise ValueError(f"image_grid_thw has {len(grids)} images but the prompts hold {next_image}")
    return positions.astype(np.int32), deltas.astype(np.int32)
