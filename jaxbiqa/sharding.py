"""Meshes and the one table that decides parallelism.

Parameters and key activations carry *logical* axis names ("embed", "mlp", ...). The rules table
maps each logical name to mesh axes ("data", "fsdp", "tensor"); nothing else in the project names
mesh axes. Without a mesh every helper here is a no-op, so the same model code runs on one device.
Activations follow the table of the innermost `rules_scope` (a run's `runtime.rules`;
`DEFAULT_RULES` outside any), read when a program is traced.

A mesh axis must divide the dimension it shards: otherwise `ShardingError` names the parameter (or
activation), the logical and mesh axes and the sizes (e.g. Qwen2.5-VL-7B's 4 KV heads on
`tensor=8`). Replicating such a dimension is an explicit choice, a rule mapping its logical axis to
nothing (`--set runtime.rules.kv_heads=`), which `jaxbiqa plan` then shows. Only the batch is
elastic: a batch that its axes do not divide (2 rows on 4 devices) runs replicated on them instead
of padded, which would make XLA's partitioner compute wrong gradients for gathers from a sharded table.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxbiqa.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
ELASTIC_AXES = frozenset({"batch"})  # logical axes left unsharded where their mesh axes do not divide them


class ShardingError(ConfigError):
    """A mesh axis that does not divide the dimension a rule shards over it (a mesh or rules setting)."""

# logical name -> mesh axis (or axes, or None for replicated). Order of precedence is the order
# of the table: a mesh axis already used by an earlier dimension of the same array is skipped.
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("norm", None),
    ("patch", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("lora_rank", None),
    ("layers", None),
)


_ACTIVE_RULES: contextvars.ContextVar[LogicalRules] = contextvars.ContextVar("jaxbiqa_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def rules_scope(rules: LogicalRules) -> Iterator[None]:
    """`constrain` places activations by `rules` inside the block."""
    token = _ACTIVE_RULES.set(rules)
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with GSPMD (Auto) axes; one size may be -1 for "the rest"."""
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(shape)
    sizes = [int(shape[n]) for n in names]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(shape)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(shape)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def logical_to_spec(names: Sequence[str | None] | None, rules: LogicalRules = DEFAULT_RULES,
                    mesh_axes: Sequence[str] | None = None) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry `names`; unknown names raise."""
    if names is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and (mesh_axes is None or a in mesh_axes))
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def current_mesh() -> jax.sharding.AbstractMesh | None:
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def constrain(x: jax.Array, names: Sequence[str | None], rules: LogicalRules | None = None) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh (by `rules`, else the
    active `rules_scope`); identity without a mesh."""
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding_for(x.shape, names, mesh, rules or _ACTIVE_RULES.get()))


def _divisible_spec(spec: PartitionSpec, shape: Sequence[int], names: Sequence[str | None], mesh: Mesh,
                    what: str) -> PartitionSpec:
    """`spec` with mesh axes left out of the elastic dimensions they do not divide; `ShardingError`
    for any other dimension a mesh axis does not divide."""
    out = []
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    for index, (dim, entry, name) in enumerate(zip(shape, padded, names)):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = []
        for a in axes:
            ways = math.prod(mesh.shape[k] for k in kept) * mesh.shape[a]
            if dim % ways == 0:
                kept.append(a)
            elif name not in ELASTIC_AXES:
                raise ShardingError(
                    f"{what}: dimension {index} ({name!r}, size {dim}) does not split {ways} ways over mesh "
                    f"axes {(*kept, a)} of {dict(mesh.shape)}: use a mesh whose axes divide it, or replicate "
                    f"it with the rule --set runtime.rules.{name}=")
        out.append(kept[0] if len(kept) == 1 else (tuple(kept) or None))
    return PartitionSpec(*out)


def sharding_for(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh,
                 rules: LogicalRules = DEFAULT_RULES, what: str = "an activation") -> NamedSharding:
    """NamedSharding of an array of `shape` with logical `names` on `mesh` (`what` names the array
    in a `ShardingError`)."""
    spec = logical_to_spec(names, rules, mesh.axis_names)
    names = tuple(names or ()) + (None,) * (len(shape) - len(names or ()))
    return NamedSharding(mesh, _divisible_spec(spec, shape, names, mesh, f"{what} of shape {tuple(shape)}"))


def state_shardings(state, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    """NamedShardings for every leaf of an NNX state, from each variable's `out_sharding` names."""
    from flax import nnx

    def one(path, variable):
        names = variable.get_metadata().get("out_sharding")
        what = "parameter " + "/".join(str(getattr(k, "key", k)) for k in path)
        return variable.replace(sharding_for(np.shape(variable.get_value()), names, mesh, rules, what))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
