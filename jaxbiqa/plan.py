"""Memory plan of a GRPO run: bytes per device of each thing a training step holds, and whether it fits.

Exact (from shapes and the sharding rules, nothing allocated): parameters (trainable and frozen,
built with `nnx.eval_shape` and placed by `jaxbiqa.sharding`, as `models.qwen2_5_vl.size` does),
the reference policy (the size of the trainable parameters: `rl.step` copies them, LoRA adapters
as zeros, and shares the frozen base), gradients (the float32 accumulator of `rl.step` plus one
micro-batch gradient in the parameter dtype), the optimizer state (`jax.eval_shape` of the optimizer's `init`, each moment
placed like its parameter), the rollout's copy of the policy (`rollout.policy_layout`: every
parameter in the compute dtype, placed by the layout's rules; none when the layout is the training
one and the parameters are already in the compute dtype) and the KV caches of pass 1 and pass 2
(`text.init_cache` shapes, `CACHE_AXES`; pass 2: one row per pass-1 sample and pass-2 sample, its
prompt the caption budget plus the template).

Estimated: activations. Per row of a micro-batch, one decoder layer saves for the backward pass
    A_layer = T * c * (8E + 2E/t + 6M/t + 2K/t) + (H/t) * T * S * (c + 4)
bytes: T tokens attending to S keys, hidden E, MLP width M, K = kv_heads * head_dim, H heads,
compute dtype of c bytes, t the tensor-parallel degree; the last term is the attention
probabilities (compute dtype) and logits (float32) of XLA's dot-product attention (a fused
flash / splash kernel does not keep them). The counts (8 + 2 E-sized, 6 M-sized, ...) were fitted
to XLA's buffer assignment for the jaxbiqa decoder (tests/scale/test_plan.py keeps them within
25%). LoRA dropout keeps a dropped copy of each adapted projection's input: + T * c * (6E + M)
per layer. The log-prob head holds about four float32 `[chunk, vocab/t]` blocks per row:
    A_head = 16 * chunk * V / t.
With `remat` (nnx.remat around each layer) the update keeps each layer's input and recomputes
one layer at a time:   A = L * T * E * c + max(1.5 * A_layer, A_head);
without:               A = L * A_layer + max(A_layer, A_head);
times the rows of a micro-batch on one device. A trained vision tower adds the same terms for its
blocks (one image per row; windowed blocks attend within a window). The rollout holds the KV
cache, the prompts' cache before it is repeated for the G samples (1/G of it), and the larger of
one prefill layer for the prompts and the decode logits; pass 2 the same for its rows and prompts.

Peaks: rollout = parameters + reference + optimizer + rollout copy + the larger of (pass-1 KV
cache + its working set) and (pass-2 KV cache + its working set): the two passes run one after
the other in one program, which frees pass 1's cache once pass 2 starts; update = parameters +
reference + optimizer + gradients + activations. A plan fits when the larger peak is
at most `headroom` x the device memory (the rest: XLA temporaries, fragmentation, runtime).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxbiqa.models.qwen2_5_vl.config import ModelConfig
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules, sharding_for

GiB = 2**30
MiB = 2**20


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    devices: int
    memory_bytes: int  # per device
    description: str


ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator("v5p-32", 16, 95 * GiB, "TPU v5p-32: 16 chips (32 TensorCores), 95 GiB HBM each"),
    Accelerator("v5e-64", 64, 16 * GiB, "TPU v5e-64 (v5litepod-64): 64 chips, 16 GiB HBM each"),
    Accelerator("8xh100-80gb", 8, 81_559 * MiB, "8x NVIDIA H100 80GB: 81,559 MiB each (nvidia-smi)"),
    Accelerator("8xh200-141gb", 8, 143_771 * MiB, "8x NVIDIA H200 141GB: 143,771 MiB each (nvidia-smi)"),
)}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One GRPO step: `prompts` x `samples` rows of `prompt_length` + `new_tokens` tokens."""

    prompts: int = 64
    samples: int = 4
    prompt_length: int = 512         # the padded pass-1 prompt: 499 tokens with a 252-token image
    image_tokens: int = 252          # visual tokens per image (512x384 -> 252)
    new_tokens: int = 1024
    micro_batch_size: int = 0        # rows per update micro-batch (all devices); 0 = every row at once
    freeze_vision: bool = True
    reference: bool = True           # a KL term (beta > 0) needs the reference policy
    logprob_chunk_size: int = 256
    # pass 2 (0: none): its prompt (caption budget + template) and new tokens, samples per pass-1 sample
    pass2_prompt_length: int = 448   # the method's 384-token caption budget + the template
    pass2_new_tokens: int = 1024
    pass2_samples: int = 1
    rollout_layout: str = "training"  # rollout.policy_layout

    def __post_init__(self):
        small = {k: v for k, v in dataclasses.asdict(self).items()
                 if isinstance(v, int) and not isinstance(v, bool)
                 and v < (0 if k in ("micro_batch_size", "image_tokens", "pass2_prompt_length") else 1)}
        if small:
            raise ValueError(f"workload sizes must be >= 1 (micro_batch_size, image_tokens >= 0), got {small}")
        if self.image_tokens > self.prompt_length:
            raise ValueError(f"image_tokens {self.image_tokens} do not fit a prompt of {self.prompt_length}")
        if self.micro_batch_size and self.rows % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} does not divide {self.rows} rows")

    @property
    def rows(self) -> int:
        return self.prompts * self.samples

    @property
    def length(self) -> int:
        return self.prompt_length + self.new_tokens

    def pass2(self) -> "Workload | None":
        """Pass 2 as a text-only workload: each pass-1 row is a prompt."""
        if not self.pass2_prompt_length:
            return None
        return dataclasses.replace(self, prompts=self.rows, samples=self.pass2_samples, image_tokens=0,
                                   prompt_length=self.pass2_prompt_length, new_tokens=self.pass2_new_tokens,
                                   pass2_prompt_length=0)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device (every device holds the same amount under the rules table)."""

    mesh: dict[str, int]
    total_params: int
    trainable_params: int
    micro_rows_per_device: int
    parameters: int            # trainable + frozen
    trainable: int
    reference: int
    gradients: int
    optimizer: int
    rollout_copy: int
    kv_cache: int
    rollout_activations: int
    pass2_kv_cache: int
    pass2_activations: int
    update_activations: int
    update_activations_other: int  # with the other remat setting, for comparison
    remat: bool
    capacity: int | None = None
    headroom: float = 0.9

    @property
    def rollout_peak(self) -> int:
        passes = max(self.kv_cache + self.rollout_activations, self.pass2_kv_cache + self.pass2_activations)
        return self.parameters + self.reference + self.optimizer + self.rollout_copy + passes

    @property
    def update_peak(self) -> int:
        return self.parameters + self.reference + self.optimizer + self.gradients + self.update_activations

    @property
    def peak(self) -> int:
        return max(self.rollout_peak, self.update_peak)

    @property
    def usable(self) -> int | None:
        return None if self.capacity is None else int(self.capacity * self.headroom)

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.peak <= self.usable

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(rollout_peak=self.rollout_peak, update_peak=self.update_peak, peak=self.peak, fits=self.fits)
        return out


# ---------------------------------------------------------------- exact parts

@functools.lru_cache(maxsize=8)
def _abstract_params(config: ModelConfig) -> nnx.State:
    from jaxbiqa.models.qwen2_5_vl.weights import abstract_model

    # stacked layers size the same per device (the "layers" axis is never sharded) and build much faster
    return nnx.state(abstract_model(config.replace(scan_layers=True)), nnx.Param)


def _device_bytes(shape_dtype: Any, sharding: jax.sharding.Sharding) -> int:
    return math.prod(sharding.shard_shape(shape_dtype.shape)) * np.dtype(shape_dtype.dtype).itemsize


def _mesh(shape: Mapping[str, int]) -> jax.sharding.AbstractMesh:
    from jaxbiqa.models.qwen2_5_vl.size import abstract_mesh

    return abstract_mesh(shape)


def parameter_split(config: ModelConfig, mesh_shape: Mapping[str, int], *, freeze_vision: bool = True,
                    rules: LogicalRules = DEFAULT_RULES) -> tuple[nnx.State, nnx.State, dict]:
    """(trainable, frozen) abstract parameter states and every leaf's sharding (path -> sharding).

    Trainable: LoRA adapters when `config.lora` is set, else every parameter; plus or minus the
    vision tower by `freeze_vision` (`models.qwen2_5_vl.lora.trainable_filter`).
    """
    from jaxbiqa.models.qwen2_5_vl.lora import trainable_filter
    from jaxbiqa.models.qwen2_5_vl.weights import leaf_shardings

    state = _abstract_params(config)
    shardings = leaf_shardings(state, _mesh(mesh_shape), rules)
    trainable, frozen = state.split(trainable_filter(lora=config.lora is not None, freeze_vision=freeze_vision), ...)
    return trainable, frozen, shardings


def state_bytes(state: nnx.State, shardings: Mapping) -> tuple[int, int]:
    """(element count, bytes per device) of an abstract state."""
    count = per_device = 0
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        count += math.prod(value.shape)
        per_device += _device_bytes(value, shardings[path])
    return count, per_device


def optimizer_bytes(trainable: nnx.State, shardings: Mapping, optimizer: Any, mesh_shape: Mapping[str, int]) -> int:
    """Bytes per device of `optimizer.init(trainable)`: moments placed like their parameters, the
    rest (step counts) replicated."""
    import optax

    flat = {path: v.get_value() for path, v in nnx.to_flat_state(trainable)}
    abstract = jax.eval_shape(optimizer.init, flat)
    replicated = jax.sharding.NamedSharding(_mesh(mesh_shape), jax.sharding.PartitionSpec())
    placed = optax.tree_map_params(optimizer, lambda leaf, sharding: _device_bytes(leaf, sharding), abstract,
                                   {path: shardings[path] for path in flat},
                                   transform_non_params=lambda leaf: _device_bytes(leaf, replicated))
    return int(sum(jax.tree.leaves(placed)))


def rollout_copy_bytes(config: ModelConfig, mesh_shape: Mapping[str, int], layout: str,
                       rules: LogicalRules = DEFAULT_RULES) -> int:
    """Bytes per device of the rollout's copy of the policy (`jaxbiqa.rollout.policy_copy`)."""
    from jaxbiqa.models.qwen2_5_vl.weights import leaf_shardings
    from jaxbiqa.rollout.policy_copy import layout_rules

    state = _abstract_params(config)
    dtypes = {np.dtype(v.get_value().dtype) for _, v in nnx.to_flat_state(state)}
    if layout == "training" and dtypes <= {np.dtype(config.dtype)}:
        return 0  # nothing to cast or move: the rollout decodes the training parameters
    shardings = leaf_shardings(state, _mesh(mesh_shape), layout_rules(layout, rules))
    return sum(_device_bytes(jax.ShapeDtypeStruct(v.get_value().shape, config.dtype), shardings[p])
               for p, v in nnx.to_flat_state(state))


def kv_cache_bytes(config: ModelConfig, rows: int, length: int, mesh_shape: Mapping[str, int],
                   rules: LogicalRules = DEFAULT_RULES) -> int:
    """Bytes per device of `init_cache(config, rows, length)` placed by `CACHE_AXES`."""
    from jaxbiqa.models.qwen2_5_vl.text import CACHE_AXES, init_cache

    cache = jax.eval_shape(lambda: init_cache(config, rows, length))
    mesh = _mesh(mesh_shape)
    return sum(_device_bytes(leaf, sharding_for(leaf.shape, names, mesh, rules))
               for leaf, names in zip(cache, CACHE_AXES, strict=True))


# ---------------------------------------------------------------- estimates

def _split(size: int, ways: int) -> float:
    """A dimension of `size` over `ways` devices when it divides (activations a mesh axis does not
    divide are the elastic batch, kept whole)."""
    return size / ways if size % ways == 0 else size


def _layer_bytes(tokens: int, keys: int, hidden: int, mlp: int, heads: int, kv: int, c: int, t: int) -> float:
    """A_layer of the module docstring for one row."""
    per_token = c * (8 * hidden + 2 * _split(hidden, t) + 6 * _split(mlp, t) + 2 * _split(kv, t))
    return tokens * per_token + _split(heads, t) * tokens * keys * (c + 4)


def _stack_bytes(layers: list[float], inputs: float, remat: bool, other: float = 0.0) -> float:
    """Activations of a stack of layers, layer i saving `layers[i]` and `inputs` the inputs of all;
    `other` is a working set that peaks apart from the layers' (the log-prob head)."""
    if remat:
        return inputs + max(1.5 * max(layers), other)
    return sum(layers) + max(max(layers), other)


def update_activation_bytes(config: ModelConfig, rows: int, workload: Workload, mesh_shape: Mapping[str, int],
                            remat: bool) -> int:
    """Estimated activation bytes per device of the update on `rows` rows (one micro-batch) per device."""
    tc, t = config.text, int(mesh_shape.get("tensor", 1))
    c = np.dtype(config.dtype).itemsize
    length = workload.length
    layer = _layer_bytes(length, length, tc.hidden_size, tc.intermediate_size, tc.num_attention_heads,
                         tc.num_key_value_heads * tc.head_dim, c, t)
    if config.lora is not None and config.lora.dropout > 0:
        layer += length * c * (6 * tc.hidden_size + tc.intermediate_size)
    head = 16 * workload.logprob_chunk_size * _split(tc.vocab_size, t)
    per_row = _stack_bytes([layer] * tc.num_hidden_layers, tc.num_hidden_layers * length * tc.hidden_size * c,
                           remat, head)
    if not workload.freeze_vision:
        per_row += _vision_bytes(config, workload, t, c, remat)
    return int(rows * per_row)


def _vision_bytes(config: ModelConfig, workload: Workload, t: int, c: int, remat: bool) -> float:
    v = config.vision
    patches = workload.image_tokens * v.spatial_merge_size**2
    window = min(patches, (v.window_size // v.patch_size) ** 2)
    blocks = [_layer_bytes(patches, patches if i in v.fullatt_block_indexes else window, v.hidden_size,
                           v.intermediate_size, v.num_heads, v.hidden_size, c, t) for i in range(v.depth)]
    return _stack_bytes(blocks, v.depth * patches * v.hidden_size * c, remat)


def rollout_activation_bytes(config: ModelConfig, workload: Workload, mesh_shape: Mapping[str, int],
                             kv_cache: int, rules: LogicalRules = DEFAULT_RULES) -> int:
    """Estimated working set per device of sampling, beside the KV cache itself. The prefill's
    queries attend over the whole cache length with `model.attention="dense"`, over one block of
    `attention_block` keys at a time with "blocked" (the online softmax keeps no more)."""
    tc, t = config.text, int(mesh_shape.get("tensor", 1))
    c = np.dtype(config.dtype).itemsize
    shards = batch_shards(mesh_shape, rules)
    prompts = math.ceil(workload.prompts / shards)
    keys = min(config.attention_block, workload.length) if config.attention == "blocked" else workload.length
    prefill = prompts * (_layer_bytes(workload.prompt_length, keys, tc.hidden_size,
                                      tc.intermediate_size, tc.num_attention_heads,
                                      tc.num_key_value_heads * tc.head_dim, c, t) + 4 * _split(tc.vocab_size, t))
    decode = 2 * (workload.rows // shards) * 4 * _split(tc.vocab_size, t)
    return int(kv_cache / workload.samples + max(prefill, decode))


# ---------------------------------------------------------------- the plan

def replicated_axes(rules: LogicalRules) -> list[str]:
    """The logical axes `rules` replicate that the default rules shard (e.g. `runtime.rules.kv_heads=`)."""
    default = dict(DEFAULT_RULES)
    return sorted(name for name, axes in rules if not axes and default.get(name))


def batch_shards(mesh_shape: Mapping[str, int], rules: LogicalRules = DEFAULT_RULES) -> int:
    """How many ways the rules split batch rows over a mesh of this shape."""
    target = dict(rules)["batch"]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    return math.prod(int(mesh_shape.get(a, 1)) for a in axes)


def default_optimizer() -> Any:
    """The optimizer `rl.step` trains with (AdamW behind a global-norm clip), for its state's size."""
    from jaxbiqa.config import OptimSection
    from jaxbiqa.rl.step import make_optimizer

    return make_optimizer(OptimSection(), total_steps=1)


def plan(config: ModelConfig, mesh_shape: Mapping[str, int], workload: Workload = Workload(), *,
         capacity: int | None = None, headroom: float = 0.9, rules: LogicalRules = DEFAULT_RULES,
         optimizer: Any = None) -> MemoryPlan:
    """The memory plan of `workload` for the model `config` (dtypes, LoRA, remat) on a mesh of
    `mesh_shape` (sizes >= 1; no devices needed); `capacity` is one device's memory in bytes."""
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    shards = batch_shards(mesh_shape, rules)
    micro = workload.micro_batch_size or workload.rows
    for what, rows in (("prompts x samples", workload.rows), ("a micro-batch", micro)):
        if rows % shards:
            raise ValueError(f"{what} = {rows} rows do not split over the {shards} batch shards of mesh "
                             f"{dict(mesh_shape)}; change the batch or put devices on the tensor axis")
    trainable, frozen, shardings = parameter_split(config, mesh_shape, freeze_vision=workload.freeze_vision,
                                                   rules=rules)
    trainable_count, trainable_bytes = state_bytes(trainable, shardings)
    frozen_count, frozen_bytes = state_bytes(frozen, shardings)
    trainable_elements = sum(_device_bytes(v.get_value(), shardings[p]) // np.dtype(v.get_value().dtype).itemsize
                             for p, v in nnx.to_flat_state(trainable))
    kv = kv_cache_bytes(config, workload.rows, workload.length, mesh_shape, rules)
    second = workload.pass2()
    kv2 = 0 if second is None else kv_cache_bytes(config, second.rows, second.length, mesh_shape, rules)
    rows = micro // shards
    return MemoryPlan(
        mesh=dict(mesh_shape), total_params=trainable_count + frozen_count, trainable_params=trainable_count,
        micro_rows_per_device=rows, parameters=trainable_bytes + frozen_bytes, trainable=trainable_bytes,
        reference=trainable_bytes if workload.reference else 0, gradients=4 * trainable_elements + trainable_bytes,
        optimizer=optimizer_bytes(trainable, shardings, optimizer or default_optimizer(), mesh_shape),
        rollout_copy=rollout_copy_bytes(config, mesh_shape, workload.rollout_layout, rules),
        kv_cache=kv, rollout_activations=rollout_activation_bytes(config, workload, mesh_shape, kv, rules),
        pass2_kv_cache=kv2,
        pass2_activations=0 if second is None else rollout_activation_bytes(config, second, mesh_shape, kv2, rules),
        update_activations=update_activation_bytes(config, rows, workload, mesh_shape, config.remat),
        update_activations_other=update_activation_bytes(config, rows, workload, mesh_shape, not config.remat),
        remat=config.remat, capacity=capacity, headroom=headroom)


def largest_fitting_micro_batch(config: ModelConfig, mesh_shape: Mapping[str, int], workload: Workload, *,
                                capacity: int, headroom: float = 0.9, rules: LogicalRules = DEFAULT_RULES,
                                optimizer: Any = None) -> int | None:
    """The largest micro-batch (rows over all devices, a multiple of the batch shards dividing the
    batch) whose plan fits, or None when not even one row per device does."""
    shards = batch_shards(mesh_shape, rules)
    candidates = [m for m in range(workload.rows, 0, -shards) if workload.rows % m == 0 and m % shards == 0]
    for micro in candidates:
        candidate = plan(config, mesh_shape, dataclasses.replace(workload, micro_batch_size=micro),
                         capacity=capacity, headroom=headroom, rules=rules, optimizer=optimizer)
        if candidate.fits:
            return micro
    return None
