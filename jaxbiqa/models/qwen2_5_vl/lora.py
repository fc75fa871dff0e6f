"""LoRA-capable Linear, trainable-parameter filters and merging adapters into the base weights.

`Linear` with rank 0 is a plain dense layer (`kernel [in, out]`, optional `bias`); with rank r it
adds `lora_a [in, r]` and `lora_b [r, out]` (`nnx.LoRAParam` stored in `adapter_dtype`, float32 by
default over a base of any dtype; B starts at zero so a fresh adapter leaves the model unchanged) and computes `x W + b + dropout(x) A B * alpha / r`. Dropout on the
adapter branch is driven by an explicit key (no key: no dropout), which keeps the layer a pure
function under jit, remat and scanned layers.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxbiqa.models.qwen2_5_vl.config import LoraConfig

__all__ = ["Linear", "LoraConfig", "merge_lora", "trainable_filter"]

M = TypeVar("M", bound=nnx.Module)

default_kernel_init = nnx.initializers.normal(0.02)  # transformers' initializer_range
# kaiming-uniform with a = sqrt(5), the usual LoRA A init
lora_a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Linear(nnx.Module):
    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str], use_bias: bool,
                 rank: int = 0, alpha: float = 1.0, dropout: float = 0.0, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, adapter_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs,
                 kernel_init=default_kernel_init):
        self.dtype = dtype
        self.rank = rank
        self.scaling = alpha / rank if rank else 0.0
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype),
                                out_sharding=axes)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype), out_sharding=(axes[1],)) if use_bias else None
        if rank:
            self.lora_a = nnx.LoRAParam(lora_a_init(rngs.params(), (in_features, rank), adapter_dtype),
                                        out_sharding=(axes[0], "lora_rank"))
            self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features), adapter_dtype),
                                        out_sharding=("lora_rank", axes[1]))
            self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        y = x @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.rank:
            h = self.dropout(x, deterministic=dropout_key is None, rngs=dropout_key)
            y = y + (h @ self.lora_a[...].astype(self.dtype)) @ self.lora_b[...].astype(self.dtype) * self.scaling
        return y


def trainable_filter(*, lora: bool, freeze_vision: bool) -> nnx.filterlib.Filter:
    """Which parameters an optimizer updates.

    lora=True: the adapters (plus the vision tower's weights unless frozen); lora=False: every
    parameter (but the vision tower's when `freeze_vision`).
    """
    vision = nnx.PathContains("visual")
    if lora:
        return nnx.LoRAParam if freeze_vision else nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, vision))
    return nnx.All(nnx.Param, nnx.Not(vision)) if freeze_vision else nnx.Param


def _module_at(root: nnx.Module, path: tuple) -> nnx.Module:
    return functools.reduce(lambda node, key: node[key] if isinstance(key, int) else getattr(node, key), path, root)


def merge_lora(model: M) -> M:
    """A plain copy of `model` (built from `model.config` without `lora`) whose kernels absorb the adapters.

    `model` must be constructible as `type(model)(config, rngs=...)`; it is left unchanged. The copy
    is built abstractly and then filled, so no second random initialisation is allocated. Stacked
    (scanned) layers merge per layer.
    """
    config = model.config
    if config.lora is None:
        raise ValueError("merge_lora: the model has no LoRA adapters (config.lora is None)")
    plain = nnx.eval_shape(lambda: type(model)(config.replace(lora=None), rngs=nnx.Rngs(0)))
    nnx.update(plain, nnx.state(model, nnx.Not(nnx.LoRAParam)))
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Linear) and module.rank:
            kernel = module.kernel[...]
            delta = jnp.einsum("...ir,...ro->...io", module.lora_a[...].astype(jnp.float32),
                               module.lora_b[...].astype(jnp.float32)) * module.scaling
            _module_at(plain, path).kernel[...] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    return plain
