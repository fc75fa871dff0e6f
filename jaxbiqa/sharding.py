"""Meshes and the one table that decides parallelism.

Parameters and key activations carry *logical* axis names ("embed", "mlp", ...). The rules table
maps each logical name to mesh axes ("data", "fsdp", "tensor"); nothing else in the project names
mesh axes. Without a mesh every helper here is a no-op, so the same model code runs on one device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

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


def constrain(x: jax.Array, names: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh; identity without one.

    Mesh axes that do not divide their dimension are left out: a padded sharding (e.g. 2 rows over
    4 batch devices) makes XLA's partitioner compute wrong gradients for gathers from a sharded table.
    """
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding_for(x.shape, names, mesh, rules))


def _divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (e.g. 2 kv heads on a 4-way tensor axis)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept = []
        for a in axes:
            if dim % (math.prod(mesh.shape[k] for k in kept) * mesh.shape[a]) == 0:
                kept.append(a)
        out.append(kept[0] if len(kept) == 1 else (tuple(kept) or None))
    return PartitionSpec(*out)


def sharding_for(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh,
                 rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
    """NamedSharding of an array of `shape` with logical `names` on `mesh`."""
    spec = logical_to_spec(names, rules, mesh.axis_names)
    return NamedSharding(mesh, _divisible_spec(spec, shape, mesh))


def state_shardings(state, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    """NamedShardings for every leaf of an NNX state, from each variable's `out_sharding` names."""
    from flax import nnx

    def one(variable):
        names = variable.get_metadata().get("out_sharding")
        return variable.replace(sharding_for(np.shape(variable.get_value()), names, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
