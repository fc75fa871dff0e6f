"""Hugging Face safetensors <-> NNX parameters of Qwen2.5-VL, in both directions.

`from_pretrained` builds the model abstractly (`nnx.eval_shape`, nothing allocated) and fills
each parameter straight into its final, possibly sharded, array: `jax.make_array_from_callback`
asks for every addressable device's slice and the callback reads just that slice from the
memory-mapped safetensors file, so the host never holds a second copy of the model.
`save_pretrained` gathers one tensor at a time into `.safetensors` shards of bounded size (the
host holds at most one shard) and writes what transformers' own `save_pretrained` writes.
Both take local folders or `gs://` ones (`jaxbiqa.paths`): a remote checkpoint is read from a
local staging copy; an export replaces the old weights only once all its files are written.

The two layouts differ only by the transforms of `TABLE`:
* Linear: torch stores `[out, in]`, NNX kernels are `[in, out]` (transpose).
* Patch embedding: the Conv3d weight `[out, C, Tp, P, P]` (kernel == stride) is a Linear over the
  patch flattened in (C, Tp, P, P) order, as the image processor emits it: kernel `[C*Tp*P*P, out]`.
* Stacked layers (`scan_layers`): one NNX parameter with a leading layer axis holds the N
  per-layer tensors; the loader reads each layer's slice, the exporter writes N tensors.
* Names: `merger.mlp.0` is `merger.mlp_0`; a norm's `weight` is `scale`, the embedding's is
  `embedding`; with tied embeddings there is no `lm_head`.
Checkpoint keys are accepted in the released layout (`model.layers.*`, `visual.*`, what
transformers 5 writes) and in transformers 5's in-memory one (`model.language_model.*`,
`model.visual.*`).

LoRA: `save_pretrained` merges adapters into the base kernels first (`lora.merge_lora`), so an
exported policy is a plain Qwen2.5-VL checkpoint; adapters of a loaded model start from their
initialisation (B = 0), as they are not part of a Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxbiqa.config import UserError
from jaxbiqa.models.qwen2_5_vl.config import ModelConfig, VisionConfig, from_hf
from jaxbiqa.models.qwen2_5_vl.lora import merge_lora
from jaxbiqa.models.qwen2_5_vl.model import Qwen2_5_VLForConditionalGeneration
from jaxbiqa.models.qwen2_5_vl.vision import conv3d_weight_to_kernel, kernel_to_conv3d_weight
from jaxbiqa.paths import PathLike, as_path, atomic_folder, follow_umask, local_copy
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules, state_shardings

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers that older checkpoints carry but that the model recomputes.
IGNORED_KEYS = re.compile(r"(^|\.)(rotary_emb|rotary_pos_emb)\.inv_freq$")
# transformers 5's in-memory prefixes -> the released checkpoint layout.
KEY_ALIASES = (("model.language_model.", "model."), ("model.visual.", "visual."))

StatePath = tuple[str | int, ...]


class CheckpointError(UserError):
    """A checkpoint that does not fit the model (the message names every offending key), or that
    cannot be read (the message names the file)."""


TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def missing_weights(directory: PathLike, hint: str = "") -> CheckpointError:
    """The error for a folder without safetensors weights, naming what it holds instead."""
    directory = as_path(directory)
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    listed = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "") or "nothing"
    message = f"{directory}: no weights ({SINGLE_FILE} or {INDEX_FILE}); it holds {listed}"
    torch = [name for name in found if name.endswith(TORCH_SUFFIXES)]
    if torch:
        message += (f"; PyTorch weights ({', '.join(torch[:3])}{', ...' if len(torch) > 3 else ''}) are not read: "
                    "write them as safetensors first, e.g. python -c \"from "
                    "transformers import Qwen2_5_VLForConditionalGeneration as M; "
                    f"M.from_pretrained('{directory}').save_pretrained('OUT')\" (then `jaxbiqa convert --from-hf "
                    "OUT` checks them)")
    return CheckpointError(message + (f"; {hint}" if hint else ""))


# --- transforms: how one NNX parameter (of one layer) relates to one HF tensor -------------------

class Transform(Protocol):
    def hf_shape(self, shape: Sequence[int]) -> tuple[int, ...]: ...
    def read(self, source: Any, index: tuple[slice, ...]) -> np.ndarray: ...
    def to_hf(self, value: np.ndarray) -> np.ndarray: ...


class Copy:
    def hf_shape(self, shape):
        return tuple(shape)

    def read(self, source, index):
        return np.asarray(source[index])

    def to_hf(self, value):
        return value


class Transpose:
    """torch Linear `[out, in]` <-> NNX kernel `[in, out]`."""

    def hf_shape(self, shape):
        return tuple(reversed(shape))

    def read(self, source, index):
        return np.asarray(source[index[::-1]]).T

    def to_hf(self, value):
        return value.T


@dataclasses.dataclass(frozen=True)
class PatchEmbed:
    """Conv3d weight `[out, C, Tp, P, P]` <-> kernel `[C*Tp*P*P, out]` (vision.py's conversions)."""

    config: VisionConfig

    def hf_shape(self, shape):
        c = self.config
        return (shape[1], c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)

    def read(self, source, index):
        rows = np.asarray(source[index[1:2]])  # the output channels this device holds
        return conv3d_weight_to_kernel(rows)[index[0]]

    def to_hf(self, value):
        return kernel_to_conv3d_weight(value, self.config)


# --- the table ------------------------------------------------------------------------------------

def _linear(hf: str, nnx_: str, bias: bool = True) -> list[tuple[str, str, str]]:
    rows = [(f"{hf}.weight", f"{nnx_}.kernel", "linear")]
    return rows + [(f"{hf}.bias", f"{nnx_}.bias", "copy")] if bias else rows


def _norm(hf: str, nnx_: str) -> list[tuple[str, str, str]]:
    return [(f"{hf}.weight", f"{nnx_}.scale", "copy")]


_VB, _TL = "visual.blocks.{i}", "model.layers.{i}"
# (HF key, NNX path, transform); "{i}" stands for a layer index.
TABLE: tuple[tuple[str, str, str], ...] = (
    ("visual.patch_embed.proj.weight", "visual.patch_embed.proj.kernel", "patch"),
    *_norm(f"{_VB}.norm1", f"{_VB}.norm1"),
    *_norm(f"{_VB}.norm2", f"{_VB}.norm2"),
    *_linear(f"{_VB}.attn.qkv", f"{_VB}.attn.qkv"),
    *_linear(f"{_VB}.attn.proj", f"{_VB}.attn.proj"),
    *[row for p in ("gate_proj", "up_proj", "down_proj") for row in _linear(f"{_VB}.mlp.{p}", f"{_VB}.mlp.{p}")],
    *_norm("visual.merger.ln_q", "visual.merger.ln_q"),
    *_linear("visual.merger.mlp.0", "visual.merger.mlp_0"),
    *_linear("visual.merger.mlp.2", "visual.merger.mlp_2"),
    ("model.embed_tokens.weight", "model.embed_tokens.embedding", "copy"),
    *[row for p in ("q_proj", "k_proj", "v_proj")
      for row in _linear(f"{_TL}.self_attn.{p}", f"{_TL}.self_attn.{p}")],
    *_linear(f"{_TL}.self_attn.o_proj", f"{_TL}.self_attn.o_proj", bias=False),
    *[row for p in ("gate_proj", "up_proj", "down_proj")
      for row in _linear(f"{_TL}.mlp.{p}", f"{_TL}.mlp.{p}", bias=False)],
    *_norm(f"{_TL}.input_layernorm", f"{_TL}.input_layernorm"),
    *_norm(f"{_TL}.post_attention_layernorm", f"{_TL}.post_attention_layernorm"),
    *_norm("model.norm", "model.norm"),
    *_linear("lm_head", "lm_head", bias=False),
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One NNX parameter and the HF tensor(s) it holds: one key, or one per layer when stacked."""

    path: StatePath
    hf_keys: tuple[str, ...]
    transform: Transform
    stacked: bool

    @property
    def name(self) -> str:
        return ".".join(map(str, self.path))


def _transforms(config: ModelConfig) -> dict[str, Transform]:
    return {"copy": Copy(), "linear": Transpose(), "patch": PatchEmbed(config.vision)}


def _is_loaded(variable: nnx.Variable) -> bool:
    """Base parameters come from the checkpoint; adapters, RNG state and buffers are initialised."""
    return isinstance(variable, nnx.Param) and not isinstance(variable, nnx.LoRAParam)


def mapping(state: nnx.State, config: ModelConfig) -> list[Entry]:
    """The entries for every checkpoint parameter of an (abstract or concrete) model state.

    A path with layer indices (`model.layers.3.…`) maps to that layer's key; the same path without
    the index (`model.layers.…`, stacked layers) maps to one key per slice of its leading axis.
    """
    transforms = _transforms(config)
    by_template = {nnx_: (hf, transforms[t]) for hf, nnx_, t in TABLE}
    by_stacked = {nnx_.replace(".{i}", ""): (hf, transforms[t]) for hf, nnx_, t in TABLE if "{i}" in nnx_}
    entries, unknown = [], []
    for path, variable in nnx.to_flat_state(state):
        if not _is_loaded(variable):
            continue
        layers = [p for p in path if isinstance(p, int)]
        template = ".".join("{i}" if isinstance(p, int) else p for p in path)
        if template in by_template and len(layers) <= 1:
            hf, transform = by_template[template]
            entries.append(Entry(path, (hf.format(i=layers[0]) if layers else hf,), transform, False))
        elif template in by_stacked:
            hf, transform = by_stacked[template]
            n = variable.get_value().shape[0]
            entries.append(Entry(path, tuple(hf.format(i=i) for i in range(n)), transform, True))
        else:
            unknown.append(".".join(map(str, path)))
    if unknown:
        raise CheckpointError(f"model parameters with no Hugging Face counterpart in weights.TABLE: {unknown}")
    return entries


def _layer_shape(entry: Entry, shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[1:] if entry.stacked else shape)


# --- reading --------------------------------------------------------------------------------------

def canonical_key(key: str) -> str:
    for prefix, replacement in KEY_ALIASES:
        if key.startswith(prefix):
            return replacement + key[len(prefix):]
    return key


class Checkpoint:
    """The tensors of a HF checkpoint directory (single file or sharded with an index), memory-mapped.

    Keys are canonicalised to the released layout; use as a context manager to close the files.
    """

    def __init__(self, directory: PathLike):
        self.source = as_path(directory)
        self._stack = contextlib.ExitStack()
        # safetensors memory-maps local files only: a remote folder is staged on this machine first
        self.directory = self._stack.enter_context(local_copy(self.source, ("*.safetensors", "*.json")))
        index_path, single = self.directory / INDEX_FILE, self.directory / SINGLE_FILE
        if index_path.is_file():
            try:
                weight_map: Mapping[str, str] = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                self._stack.close()
                raise CheckpointError(f"{self.source / INDEX_FILE}: not a safetensors index ({type(err).__name__}: "
                                      f"{err})") from None
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, files = {}, [SINGLE_FILE]
        else:
            self._stack.close()
            raise missing_weights(self.source)
        self._files: dict[str, Any] = {}
        self._where: dict[str, tuple[str, str]] = {}  # canonical key -> (file, stored key)
        try:
            for name in files:
                self._open(name, weight_map)
        except BaseException:
            self._stack.close()
            raise
        stray = [k for k in weight_map if canonical_key(k) not in self._where]
        if stray:
            self._stack.close()
            raise CheckpointError(f"{self.source / INDEX_FILE} maps keys that their file does not contain: {stray[:10]}")

    def _open(self, name: str, weight_map: Mapping[str, str]) -> None:
        if not (self.directory / name).is_file():
            raise FileNotFoundError(f"{self.source / INDEX_FILE} lists {name}, which does not exist")
        try:
            handle = self._stack.enter_context(safe_open(str(self.directory / name), framework="numpy"))
        except Exception as err:  # safetensors' own error type: a truncated or foreign file
            raise CheckpointError(f"{self.source / name}: not a readable safetensors file ({err})") from None
        self._files[name] = handle
        for key in handle.keys():
            if weight_map and weight_map.get(key) != name:
                continue  # the index decides which file holds a key
            canon = canonical_key(key)
            if canon in self._where:
                raise CheckpointError(f"{canon!r} appears twice: as {self._where[canon][1]!r} in "
                                      f"{self._where[canon][0]} and as {key!r} in {name}")
            self._where[canon] = (name, key)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def keys(self) -> list[str]:
        return list(self._where)

    def slice(self, key: str):
        name, stored = self._where[key]
        return self._files[name].get_slice(stored)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.slice(key).get_shape())


def check_checkpoint(entries: Sequence[Entry], state: nnx.State, checkpoint: Checkpoint,
                     ignore: Callable[[str], bool]) -> None:
    """Every parameter has its tensor(s), every tensor is used or ignored, every shape matches."""
    values = {path: v.get_value() for path, v in nnx.to_flat_state(state)}
    expected = {}
    for entry in entries:
        shape = entry.transform.hf_shape(_layer_shape(entry, values[entry.path].shape))
        for key in entry.hf_keys:
            expected[key] = (entry, shape)
    present = set(checkpoint.keys())
    problems = [f"missing tensor {k!r} (for model parameter {e.name})"
                for k, (e, _) in expected.items() if k not in present]
    problems += [f"unused tensor {k!r}: no model parameter takes it"
                 for k in sorted(present - set(expected)) if not ignore(k)]
    problems += [f"shape mismatch for {k!r}: checkpoint {checkpoint.shape(k)}, model parameter {e.name} "
                 f"expects {shape}" for k, (e, shape) in expected.items()
                 if k in present and checkpoint.shape(k) != shape]
    if problems:
        raise CheckpointError(f"{checkpoint.directory} does not fit the model:\n  " + "\n  ".join(problems))


def _reader(entry: Entry, checkpoint: Checkpoint, dtype: np.dtype) -> Callable[[tuple[slice, ...]], np.ndarray]:
    def read(index: tuple[slice, ...]) -> np.ndarray:
        if not entry.stacked:
            return entry.transform.read(checkpoint.slice(entry.hf_keys[0]), index).astype(dtype)
        layers = range(len(entry.hf_keys))[index[0]]
        parts = [entry.transform.read(checkpoint.slice(entry.hf_keys[i]), index[1:]).astype(dtype) for i in layers]
        return np.stack(parts)

    return read


def leaf_shardings(state: nnx.State, mesh: Any | None, rules: LogicalRules = DEFAULT_RULES) -> dict[StatePath, Any]:
    """Path -> sharding of every leaf of an (abstract or concrete) state: the rules table's under
    `mesh` (a Mesh, or an AbstractMesh for sizes only), the first local device without one."""
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return {path: device for path, _ in nnx.to_flat_state(state)}
    return {path: v.get_value() for path, v in nnx.to_flat_state(state_shardings(state, mesh, rules))}


def abstract_model(config: ModelConfig, seed: int = 0) -> nnx.Module:
    """The model with `jax.ShapeDtypeStruct` leaves: its structure and shapes, nothing allocated."""
    return nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(seed)))


def _initialise(config: ModelConfig, seed: int, paths: Sequence[StatePath],
                shardings: Sequence[Any]) -> list[jax.Array]:
    """Values of the variables a checkpoint does not hold (adapters, RNG state, buffers).

    The whole model is traced but only these leaves are outputs, so XLA drops every other
    initialiser and the base weights are never allocated.
    """

    def init() -> list[jax.Array]:
        flat = dict(nnx.to_flat_state(nnx.state(Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(seed)))))
        return [flat[p].get_value() for p in paths]

    return jax.jit(init, out_shardings=list(shardings))() if paths else []


def load_model(config: ModelConfig, directory: str | Path, mesh: jax.sharding.Mesh | None = None,
               rules: LogicalRules = DEFAULT_RULES, seed: int = 0) -> nnx.Module:
    """The model of `config` with its parameters read from the checkpoint in `directory`."""
    graphdef, state = nnx.split(abstract_model(config, seed))
    entries = mapping(state, config)
    shardings = leaf_shardings(state, mesh, rules)
    tied_head = config.tie_word_embeddings
    with Checkpoint(directory) as checkpoint:
        check_checkpoint(entries, state, checkpoint,
                         ignore=lambda k: bool(IGNORED_KEYS.search(k)) or (tied_head and k == "lm_head.weight"))
        variables = dict(nnx.to_flat_state(state))
        for entry in entries:
            variable = variables[entry.path]
            abstract = variable.get_value()  # the checkpoint's tensors are cast to the parameter's dtype
            variable.set_value(jax.make_array_from_callback(abstract.shape, shardings[entry.path],
                                                            _reader(entry, checkpoint, np.dtype(abstract.dtype)),
                                                            dtype=abstract.dtype))
    rest = [p for p, v in variables.items() if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    for path, value in zip(rest, _initialise(config, seed, rest, [shardings[p] for p in rest]), strict=True):
        variables[path].set_value(value)
    abstract_left = [".".join(map(str, p)) for p, v in variables.items()
                     if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract_left:
        raise CheckpointError(f"variables left abstract after loading: {abstract_left}")
    return nnx.merge(graphdef, state)


def _checkpoint_dtype(raw: Mapping[str, Any]) -> str | None:
    for source in (raw, raw.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if isinstance(source.get(key), str) and source[key] in ("float32", "bfloat16", "float16"):
                return source[key]
    return None


def read_config(path: str | Path, dtype: Any = None, param_dtype: Any = None, **runtime: Any) -> ModelConfig:
    """ModelConfig of a checkpoint directory's (or a file's) `config.json`.

    `param_dtype` defaults to the checkpoint's own dtype (its `dtype`/`torch_dtype`, like
    transformers 5's `dtype="auto"`), else float32; `dtype` (compute) defaults to `param_dtype`.
    """
    path = as_path(path)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such config file")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    param_dtype = jnp.dtype(param_dtype).name if param_dtype is not None else _checkpoint_dtype(raw) or "float32"
    dtype = jnp.dtype(dtype).name if dtype is not None else param_dtype
    return from_hf(raw, param_dtype=param_dtype, dtype=dtype, **runtime)


def from_pretrained(path: str | Path, dtype: Any = None, param_dtype: Any = None,
                    mesh: jax.sharding.Mesh | None = None, rules: LogicalRules = DEFAULT_RULES,
                    *, seed: int = 0, **runtime: Any) -> nnx.Module:
    """Load a Hugging Face Qwen2.5-VL checkpoint directory (`config.json` + safetensors).

    Dtypes default as in `read_config`. Under `mesh` every parameter is created sharded as
    `rules` says. `runtime` sets other ModelConfig runtime options (`scan_layers`, `remat`,
    `lora`, ...); `seed` initialises what the checkpoint does not hold (LoRA adapters).
    """
    config = read_config(as_path(path) / "config.json", dtype, param_dtype, **runtime)
    return load_model(config, path, mesh, rules, seed)


# --- writing --------------------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB" / "500MiB" (decimal units as in transformers)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '5GB' / '500MiB'")
    return int(float(match[1]) * _UNITS[match[2] or "B"])


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _gather(value: jax.Array) -> np.ndarray:
    if value.is_fully_addressable:
        return np.asarray(jax.device_get(value))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def _plan_shards(sizes: Sequence[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for key, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += nbytes
    return shards


def save_pretrained(model: nnx.Module, path: PathLike, max_shard_size: int | str = "5GB", *,
                    add_files: Callable[[Path], None] | None = None) -> list[epath.Path]:
    """Write `model` as a Hugging Face checkpoint (`config.json` + safetensors) into `path`.

    LoRA adapters are merged into the base kernels first. Tensors keep the parameters' dtype;
    shards hold at most `max_shard_size` bytes (one larger tensor gets a shard of its own) and get
    an index when there are several. Nothing in `path` changes until every file is written
    (`jaxbiqa.paths.atomic_folder`): an error or a full disk midway keeps the old weights; then the
    new files replace theirs, stale weight files are removed and other files (a tokenizer) stay.
    `add_files(folder)` may add files (e.g. the tokenizer) to the export. Every process gathers;
    process 0 writes. Returns the written files.
    """
    config = model.config
    if config.lora is not None:
        model, config = merge_lora(model), config.replace(lora=None)
    state = nnx.state(model)
    entries = mapping(state, config)
    values = {p: v.get_value() for p, v in nnx.to_flat_state(state)}
    tensors: dict[str, tuple[Entry, int | None]] = {}
    for entry in entries:
        for layer, key in enumerate(entry.hf_keys):
            tensors[key] = (entry, layer if entry.stacked else None)
    order = sorted(tensors, key=_natural)

    def nbytes(key: str) -> int:
        entry, _ = tensors[key]
        value = values[entry.path]
        return math.prod(_layer_shape(entry, value.shape)) * value.dtype.itemsize

    shards = _plan_shards([(k, nbytes(k)) for k in order], parse_size(max_shard_size))
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    writer = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        # earlier weights that this export does not overwrite (other shard counts) are removed
        stale = ("model-*-of-*.safetensors", SINGLE_FILE, INDEX_FILE)
        directory = stack.enter_context(atomic_folder(path, stale)) if writer else None
        for name, keys in zip(names, shards, strict=True):
            shard = {}
            for key in keys:  # every process takes part in each gather
                entry, layer = tensors[key]
                value = values[entry.path]
                shard[key] = np.ascontiguousarray(entry.transform.to_hf(_gather(value if layer is None
                                                                                else value[layer])))
            if writer:
                save_file(shard, str(directory / name), metadata={"format": "pt"})
                follow_umask(directory / name)  # safetensors creates its files 0600
            del shard
        if not writer:
            return []
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(nbytes(k) for k in order)},
                     "weight_map": {k: n for n, keys in zip(names, shards, strict=True) for k in keys}}
            (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
        if add_files is not None:
            add_files(directory)
        written = sorted(item.name for item in directory.iterdir())
    target = as_path(path)
    return [target / name for name in written]
