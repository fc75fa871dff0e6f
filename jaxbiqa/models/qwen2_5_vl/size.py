"""How big a Qwen2.5-VL config is, without allocating it: parameter counts and bytes per device.

The model is built with `nnx.eval_shape` (shapes only) and every parameter's sharding comes from
the logical-axis rules table, so a 7B model on a 256-device pod can be sized on a laptop: the mesh
may be an `AbstractMesh` (or just its axis sizes), no devices needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from jaxbiqa.models.qwen2_5_vl.config import ModelConfig, TextConfig, VisionConfig
from jaxbiqa.models.qwen2_5_vl.weights import abstract_model, leaf_shardings
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules


def qwen2_5_vl_7b(**runtime: Any) -> ModelConfig:
    """The released Qwen2.5-VL-7B(-Instruct) architecture; `runtime` sets dtype / scan / LoRA options."""
    text = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                      mrope_section=(16, 24, 24), max_position_embeddings=128000)
    vision = VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          out_hidden_size=3584, fullatt_block_indexes=(7, 15, 23, 31))
    return ModelConfig(text=text, vision=vision, image_token_id=151655, video_token_id=151656,
                       vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=False,
                       **runtime)


@dataclasses.dataclass(frozen=True)
class SizeReport:
    """Parameter counts (vision: tower and merger; text: decoder, embeddings, lm_head; lora:
    adapters) and parameter bytes, unsharded and on each device of `mesh` (every device holds
    the same amount: the rules only shard dimensions that the mesh axes divide)."""

    vision_params: int
    text_params: int
    lora_params: int
    total_bytes: int
    bytes_per_device: int
    mesh: dict[str, int]
    param_dtype: str

    @property
    def total_params(self) -> int:
        return self.vision_params + self.text_params + self.lora_params

    def summary(self) -> str:
        mesh = ",".join(f"{k}={v}" for k, v in self.mesh.items()) or "none (one device)"
        lines = [f"parameters: {self.total_params:,} = vision {self.vision_params:,} + text {self.text_params:,}"
                 + (f" + lora {self.lora_params:,}" if self.lora_params else ""),
                 f"param dtype: {self.param_dtype}",
                 f"bytes: {self.total_bytes:,} ({self.total_bytes / 2**30:.2f} GiB) in all",
                 f"mesh: {mesh} ({math.prod(self.mesh.values())} devices)",
                 f"bytes per device: {self.bytes_per_device:,} ({self.bytes_per_device / 2**30:.2f} GiB)"]
        return "\n".join(lines)


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
    """A device-free mesh of the given axis sizes (GSPMD/Auto axes, like `sharding.make_mesh`)."""
    bad = {k: v for k, v in shape.items() if int(v) < 1}
    if bad:
        raise ValueError(f"mesh axis sizes must be >= 1 to size a model abstractly, got {bad}")
    return AbstractMesh(tuple(int(v) for v in shape.values()), tuple(shape), axis_types=(AxisType.Auto,) * len(shape))


def size_report(config: ModelConfig, mesh: jax.sharding.Mesh | AbstractMesh | Mapping[str, int] | None = None,
                rules: LogicalRules = DEFAULT_RULES) -> SizeReport:
    """Count and size the parameters of `config` sharded over `mesh` as `rules` says; allocates nothing."""
    if isinstance(mesh, Mapping):
        mesh = abstract_mesh(mesh)
    state = nnx.state(abstract_model(config), nnx.Param)
    shardings = leaf_shardings(state, mesh, rules) if mesh is not None else None
    counts = {"vision": 0, "text": 0, "lora": 0}
    total_bytes = per_device = 0
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        group = "lora" if isinstance(variable, nnx.LoRAParam) else "vision" if path[0] == "visual" else "text"
        counts[group] += math.prod(value.shape)
        itemsize = np.dtype(value.dtype).itemsize
        total_bytes += math.prod(value.shape) * itemsize
        shard = shardings[path].shard_shape(value.shape) if shardings else value.shape
        per_device += math.prod(shard) * itemsize
    return SizeReport(vision_params=counts["vision"], text_params=counts["text"], lora_params=counts["lora"],
                      total_bytes=total_bytes, bytes_per_device=per_device,
                      mesh=dict(mesh.shape) if mesh is not None else {}, param_dtype=config.param_dtype)
