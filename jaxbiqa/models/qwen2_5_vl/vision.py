"""Qwen2.5-VL vision tower in Flax NNX, numerically the same as transformers' PyTorch one.

The PyTorch tower derives window permutations and `cu_seqlens` from `grid_thw` inside `forward`
(data-dependent shapes). Here all of that happens on the host in `vision_plan`, and attention runs
over *padded groups*: every window (or every image frame, for the full-attention blocks) becomes one
row of a `[groups, width]` gather index with its true length alongside. Attention is then an
ordinary batched call with per-group sequence lengths, O(patches x window) for window blocks
instead of a mask over all patches of all images, and every shape in the jitted call is static.

Patch order. The image processor emits patches merge-unit by merge-unit (the 2x2 patches that the
merger fuses are consecutive). The blocks run in *window order* (merge units regrouped so each
window is contiguous, `VisionPlan.window_index`); the merger output is returned in the original
merge-unit order (`VisionPlan.reverse_index`), which is the order of the `<|image_pad|>` tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbiqa.models.qwen2_5_vl.config import VisionConfig
from jaxbiqa.sharding import constrain

ROPE_THETA = 10000.0  # transformers' vision `rope_parameters` default; VisionConfig does not carry it

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class AttentionGroups(NamedTuple):
    """Packed-sequence attention as static shapes (the equivalent of one `cu_seqlens`).

    Positions refer to the window-ordered patch sequence. Group g holds positions
    `index[g, :lengths[g]]`; its remaining entries repeat the last member and are masked.
    """

    index: np.ndarray  # [groups, width] int32
    lengths: np.ndarray  # [groups] int32
    slot: np.ndarray  # [num_patches] int32: flat position g * width + k of each patch in the grouped layout


class VisionPlan(NamedTuple):
    """Everything data-dependent about a set of images, computed on the host by `vision_plan`.

    A pytree of int32 numpy arrays: pass it through `jax.jit` as an argument (its shapes depend
    only on the image sizes, so a fixed set of sizes compiles once).
    """

    position_ids: np.ndarray  # [num_patches, 2] (row, column) of each patch, in window order
    window_index: np.ndarray  # [num_units] original merge unit at each window-order position
    reverse_index: np.ndarray  # [num_units] inverse permutation of window_index
    window: AttentionGroups  # one group per window
    full: AttentionGroups  # one group per image frame

    @property
    def num_patches(self) -> int:
        return self.position_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Number of merged visual tokens (`<|image_pad|>` positions) the tower returns."""
        return self.window_index.shape[0]


def _groups(lengths: np.ndarray, width: int) -> AttentionGroups:
    """Consecutive runs of `lengths` patches, each padded to `width`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    index = starts[:, None] + np.minimum(np.arange(width)[None, :], lengths[:, None] - 1)
    group_of = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    slot = group_of * width + within
    return AttentionGroups(index.astype(np.int32), lengths.astype(np.int32), slot.astype(np.int32))


def vision_plan(grid_thw: np.ndarray, config: VisionConfig) -> VisionPlan:
    """Window permutation, rotary positions and attention groups for images with `grid_thw`.

    `grid_thw` is the image processor's `image_grid_thw`: one (frames, patch rows, patch columns)
    row per image, images concatenated in that order in `pixel_values`. Windows tile each frame in
    row-major order, `window_size // spatial_merge_size // patch_size` merge units a side; windows at
    the right and bottom edges are cut short (as in transformers, whose padding windows vanish).
    """
    grid = np.asarray(grid_thw)
    if grid.ndim != 2 or grid.shape[1] != 3 or grid.shape[0] == 0:
        raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {grid.shape}")
    if not np.issubdtype(grid.dtype, np.integer) or (grid <= 0).any():
        raise ValueError(f"image_grid_thw must hold positive integers, got {grid.tolist()}")
    merge = config.spatial_merge_size
    if (grid[:, 1:] % merge).any():
        raise ValueError(f"image_grid_thw rows {grid.tolist()}: heights and widths must be multiples of "
                         f"spatial_merge_size={merge}")
    side = config.window_size // merge // config.patch_size
    if side < 1:
        raise ValueError(f"window_size={config.window_size} is smaller than one merge unit "
                         f"({merge} x {config.patch_size} pixels)")
    unit = merge * merge
    inner_row, inner_col = np.divmod(np.arange(unit), merge)

    window_index, window_lengths, frame_lengths, positions = [], [], [], []
    offset = 0
    for frames, height, width in grid.tolist():
        unit_rows, unit_cols = height // merge, width // merge
        row, col = np.divmod(np.arange(unit_rows * unit_cols), unit_cols)
        # window-major, then row-major inside the window (np.lexsort: last key is the primary one)
        order = np.lexsort((col % side, row % side, col // side, row // side))
        windows_per_row = -(-unit_cols // side)
        units_per_window = np.bincount((row // side) * windows_per_row + col // side)
        row, col = row[order], col[order]
        patch_pos = np.stack([(row[:, None] * merge + inner_row).ravel(),
                              (col[:, None] * merge + inner_col).ravel()], axis=-1)
        for frame in range(frames):
            window_index.append(offset + frame * unit_rows * unit_cols + order)
            window_lengths.append(units_per_window * unit)
            frame_lengths.append(height * width)
            positions.append(patch_pos)
        offset += frames * unit_rows * unit_cols

    window_index = np.concatenate(window_index).astype(np.int32)
    return VisionPlan(
        position_ids=np.concatenate(positions).astype(np.int32),
        window_index=window_index,
        reverse_index=np.argsort(window_index).astype(np.int32),
        window=_groups(np.concatenate(window_lengths), side * side * unit),
        full=_groups(np.asarray(frame_lengths), max(frame_lengths)),
    )


def conv3d_weight_to_kernel(weight: np.ndarray) -> np.ndarray:
    """Torch `patch_embed.proj.weight` [embed, C, Tp, P, P] -> Linear kernel [C*Tp*P*P, embed].

    The Conv3d's stride equals its kernel, so it is a matrix product with each flattened patch, and
    the image processor flattens a patch in (C, Tp, P, P) order, the order of the weight's last dims.
    """
    weight = np.asarray(weight)
    if weight.ndim != 5:
        raise ValueError(f"expected a Conv3d weight [embed, C, Tp, P, P], got shape {weight.shape}")
    return weight.reshape(weight.shape[0], -1).T


def kernel_to_conv3d_weight(kernel: np.ndarray, config: VisionConfig) -> np.ndarray:
    """Inverse of `conv3d_weight_to_kernel`: Linear kernel [C*Tp*P*P, embed] -> [embed, C, Tp, P, P]."""
    kernel = np.asarray(kernel)
    if kernel.shape != (config.patch_dim, config.hidden_size):
        raise ValueError(f"patch embedding kernel has shape {kernel.shape}, "
                         f"expected {(config.patch_dim, config.hidden_size)}")
    return kernel.T.reshape(config.hidden_size, config.in_channels, config.temporal_patch_size,
                            config.patch_size, config.patch_size)


def _linear(n_in: int, n_out: int, names: tuple[str, str], *, bias: bool, dtype, param_dtype,
            rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in, n_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), names),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)),
    )


def _rms_norm(size: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(size, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)))


def _rotate_half(x: jax.Array) -> jax.Array:
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)


def rotary_cos_sin(position_ids: jax.Array, head_dim: int, theta: float = ROPE_THETA) -> tuple[jax.Array, jax.Array]:
    """2-D rotary tables [N, head_dim] (float32): half the frequencies for rows, half for columns."""
    quarter = jnp.arange(0, head_dim // 2, 2, dtype=jnp.float32) / (head_dim // 2)
    inv_freq = 1.0 / (theta ** quarter)
    angles = position_ids.astype(jnp.float32)[..., None] * inv_freq  # [N, 2, head_dim / 4]
    angles = angles.reshape(angles.shape[0], -1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


class PatchEmbed(nnx.Module):
    """The Conv3d patch embedding as a Linear over flattened patches (kernel = stride = patch)."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.proj = _linear(config.patch_dim, config.hidden_size, ("patch", "vision_embed"), bias=False,
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        return self.proj(pixel_values)


class VisionAttention(nnx.Module):
    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        dim = config.hidden_size
        # The fused output mixes q, k, v and heads, so it is not split over "vision_heads".
        self.qkv = _linear(dim, 3 * dim, ("vision_embed", "qkv"), bias=True, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)
        self.proj = _linear(dim, dim, ("vision_heads", "vision_embed"), bias=True, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, groups: AttentionGroups) -> jax.Array:
        n = x.shape[0]
        q, k, v = jnp.unstack(self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim), axis=1)

        def rotate(t: jax.Array) -> jax.Array:
            t32 = t.astype(jnp.float32)
            return (t32 * cos[:, None] + _rotate_half(t32) * sin[:, None]).astype(t.dtype)

        def grouped(t: jax.Array) -> jax.Array:
            return constrain(t[groups.index], ("batch", "length", "vision_heads", None))

        out = jax.nn.dot_product_attention(grouped(rotate(q)), grouped(rotate(k)), grouped(v),
                                           query_seq_lengths=groups.lengths,
                                           key_value_seq_lengths=groups.lengths)
        out = out.reshape(-1, self.num_heads, self.head_dim)[groups.slot]
        out = constrain(out, ("length", "vision_heads", None))
        return self.proj(out.reshape(n, -1))


class VisionMLP(nnx.Module):
    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"vision hidden_act {config.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[config.hidden_act]
        dim, hidden = config.hidden_size, config.intermediate_size
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = _linear(dim, hidden, ("vision_embed", "vision_mlp"), **kw)
        self.up_proj = _linear(dim, hidden, ("vision_embed", "vision_mlp"), **kw)
        self.down_proj = _linear(hidden, dim, ("vision_mlp", "vision_embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(self.act(self.gate_proj(x)) * self.up_proj(x), ("length", "vision_mlp"))
        return self.down_proj(h)


class VisionBlock(nnx.Module):
    """Pre-norm block; `full_attention` blocks attend over whole frames, the others within windows."""

    def __init__(self, config: VisionConfig, full_attention: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.full_attention = full_attention
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _rms_norm(config.hidden_size, config.rms_norm_eps, **kw)
        self.norm2 = _rms_norm(config.hidden_size, config.rms_norm_eps, **kw)
        self.attn = VisionAttention(config, **kw)
        self.mlp = VisionMLP(config, **kw)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, plan: VisionPlan) -> jax.Array:
        groups = plan.full if self.full_attention else plan.window
        x = x + self.attn(self.norm1(x), cos, sin, groups)
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("length", None))


class PatchMerger(nnx.Module):
    """RMSNorm per patch, then an MLP over each merge unit's concatenated patches (HF `merger`)."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        merged = config.hidden_size * config.spatial_merge_size**2
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_q = _rms_norm(config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
        self.mlp_0 = _linear(merged, merged, ("vision_embed", "vision_mlp"), **kw)
        self.mlp_2 = _linear(merged, config.out_hidden_size, ("vision_mlp", "embed"), **kw)
        self.merged = merged

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(-1, self.merged)
        return self.mlp_2(jax.nn.gelu(self.mlp_0(x), approximate=False))


def _run_block(block: VisionBlock, x: jax.Array, cos: jax.Array, sin: jax.Array, plan: VisionPlan) -> jax.Array:
    return block(x, cos, sin, plan)


_run_block_remat = nnx.remat(_run_block)


class VisionTower(nnx.Module):
    """`visual(pixel_values [num_patches, patch_dim], plan) -> [num_patches / merge**2, out_hidden_size]`.

    `dtype` is the compute dtype, `param_dtype` the storage dtype (names or numpy dtypes);
    `remat=True` recomputes each block's activations in the backward pass.
    """

    def __init__(self, config: VisionConfig, *, dtype="float32", param_dtype="float32", remat: bool = False,
                 rngs: nnx.Rngs):
        bad = [i for i in config.fullatt_block_indexes if not 0 <= i < config.depth]
        if bad:
            raise ValueError(f"fullatt_block_indexes {bad} are outside the {config.depth} vision blocks")
        if config.hidden_size % config.num_heads or config.head_dim % 4:
            raise ValueError(f"vision hidden_size {config.hidden_size} / num_heads {config.num_heads} must give a "
                             "head_dim divisible by 4 (2-D rotary embedding)")
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        kw = dict(dtype=self.dtype, param_dtype=jnp.dtype(param_dtype), rngs=rngs)
        self.patch_embed = PatchEmbed(config, **kw)
        full = set(config.fullatt_block_indexes)
        self.blocks = nnx.List([VisionBlock(config, i in full, **kw) for i in range(config.depth)])
        self.merger = PatchMerger(config, **kw)

    def __call__(self, pixel_values: jax.Array, plan: VisionPlan) -> jax.Array:
        cfg = self.config
        n = plan.position_ids.shape[0]
        if pixel_values.ndim != 2 or pixel_values.shape != (n, cfg.patch_dim):
            raise ValueError(f"pixel_values has shape {pixel_values.shape}; the plan's image_grid_thw needs "
                             f"{(n, cfg.patch_dim)} (num_patches, channels * temporal_patch * patch**2)")
        unit = cfg.spatial_merge_size**2
        x = self.patch_embed(pixel_values.astype(self.dtype))
        x = x.reshape(n // unit, unit, -1)[plan.window_index].reshape(n, -1)
        x = constrain(x, ("length", None))
        cos, sin = rotary_cos_sin(plan.position_ids, cfg.head_dim)
        run = _run_block_remat if self.remat else _run_block
        for block in self.blocks:
            x = run(block, x, cos, sin, plan)
        return self.merger(x)[plan.reverse_index]


__all__ = [
    "AttentionGroups", "PatchEmbed", "PatchMerger", "VisionAttention", "VisionBlock", "VisionMLP", "VisionPlan",
    "VisionTower", "conv3d_weight_to_kernel", "kernel_to_conv3d_weight", "rotary_cos_sin",
    "vision_plan",
]
