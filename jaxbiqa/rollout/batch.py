"""Host-side prompt batches for the sampler: left padding to a static length bucket, M-RoPE
positions and rope deltas, the vision plan. Everything data-dependent is decided here, so the
compiled prefill and decode only see fixed shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxbiqa.models.qwen2_5_vl.config import ModelConfig
from jaxbiqa.models.qwen2_5_vl.rope import get_rope_index
from jaxbiqa.models.qwen2_5_vl.vision import VisionPlan, vision_plan
from jaxbiqa.processing import pad_rows


class PromptBatch(NamedTuple):
    """A left-padded prompt batch (numpy; a pytree, so it passes through `jax.jit` as arguments)."""

    input_ids: np.ndarray  # [B, T] int32
    attention_mask: np.ndarray  # [B, T] int32, ones at the right end of each row
    positions: np.ndarray  # [3, B, T] int32 M-RoPE positions
    rope_deltas: np.ndarray  # [B] int32: position of a later token = its index among valid tokens + delta
    pixel_values: np.ndarray | None = None  # [num_patches, patch_dim] float32, images of all rows in order
    vision_plan: VisionPlan | None = None

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `length` tokens (`length` itself when there are no buckets)."""
    if not buckets:
        return length
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise ValueError(f"a prompt of {length} tokens is longer than the largest prompt bucket {max(buckets)} "
                     f"(buckets {tuple(buckets)}); add a larger bucket")


def prepare_prompts(config: ModelConfig, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                    *, buckets: Sequence[int] = (), pad_token_id: int = 0) -> PromptBatch:
    """A `PromptBatch` from transformers-style inputs (numpy or anything array-like).

    Rows may come padded on either side: the valid tokens of each row are moved to the right end
    of a width chosen by `pick_bucket`. `pixel_values` / `image_grid_thw` are the image
    processor's outputs for the images of all rows, in row order.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"input_ids must be [batch, length] with at least one row, got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    rows = [row[m > 0].tolist() for row, m in zip(ids, mask)]
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise ValueError(f"prompt rows {empty} have no tokens (attention_mask is all zero)")
    width = pick_bucket(max(map(len, rows)), buckets)
    ids, mask = pad_rows(rows, pad_token_id, width)
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pixel_values and image_grid_thw go together: pass both or neither")
    grid = None if image_grid_thw is None else np.asarray(image_grid_thw)
    positions, deltas = get_rope_index(ids, grid, mask, config)  # also checks image tokens against the grid
    plan = None
    if grid is not None:
        plan = vision_plan(grid, config.vision)
        pixel_values = np.asarray(pixel_values, np.float32)
        if pixel_values.shape != (plan.num_patches, config.vision.patch_dim):
            raise ValueError(f"pixel_values shape {pixel_values.shape} does not match image_grid_thw "
                             f"{grid.tolist()}: expected {(plan.num_patches, config.vision.patch_dim)}")
    return PromptBatch(ids.astype(np.int32), mask.astype(np.int32), positions.astype(np.int32),
                       deltas[:, 0].astype(np.int32), pixel_values, plan)
