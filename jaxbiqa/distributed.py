"""JAX's multi-controller runtime, started from the environment; meshes over slices; global batches.

Every process runs the same program. `setup(section)` does what must happen before the first
computation: the persistent compilation cache, `jax.distributed.initialize` (once, and only when
the environment is a cluster: see `jaxbiqa.config.RuntimeSection`), then the mesh. Each process loads
its own share of the data; `global_batch` assembles the shares into global arrays split over the
mesh's batch axes. Host-side work that needs every row (the trainer's rewards) uses
`gather_rows` (each process's rows, concatenated in process order, on every process),
`shard_batch` (a host batch every process holds in full -> global arrays) and `fetch`
(`jax.device_get` that also reads arrays spread over other processes' devices). Only the main
process writes logs and reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding

from jaxbiqa import sharding
from jaxbiqa.config import ConfigError, RuntimeSection

ENV_COORDINATOR = "JAXBIQA_COORDINATOR"
ENV_NUM_PROCESSES = "JAXBIQA_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXBIQA_PROCESS_ID"
ENV_DISTRIBUTED = "JAXBIQA_DISTRIBUTED"
# what jax's own SLURM detection reads (jax._src.clusters.slurm_cluster)
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
TPU_POD_VARS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


# ---------------------------------------------------------------- start-up

@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How to call `jax.distributed.initialize`: explicit arguments, or none at all (JAX detects
    the cluster itself: TPU pods, SLURM, Open MPI, Kubernetes). `source` says what decided it."""

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def detect_cluster(section: RuntimeSection = RuntimeSection(), env: Mapping[str, str] | None = None, *,
                   coordinator_address: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None) -> ClusterSpec | None:
    """What kind of multi-process run this is, or None for a single process.

    Precedence for each explicit value: the argument, the section's field, the JAXBIQA_* variable.
    """
    env = os.environ if env is None else env
    if section.distributed == "off":
        return None
    address = coordinator_address or section.coordinator_address or env.get(ENV_COORDINATOR, "").strip()
    count = num_processes or section.num_processes or _env_int(env, ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else (
        section.process_id if section.process_id >= 0 else _env_int(env, ENV_PROCESS_ID))
    if address:
        missing = [name for name, value in ((ENV_NUM_PROCESSES, count), (ENV_PROCESS_ID, index)) if value is None]
        if missing:
            raise ConfigError(f"coordinator {address!r} given but not {' / '.join(missing)} "
                             f"(set the environment variables, the runtime.* fields, or the arguments)")
        if not 0 <= index < count:
            raise ConfigError(f"process id {index} is not in [0, {count}) for coordinator {address!r}")
        return ClusterSpec("explicit", address, count, index)
    if count is not None or index is not None:
        raise ConfigError(f"a process count / id ({count}, {index}) without a coordinator address: set "
                         f"{ENV_COORDINATOR} (host:port of process 0) or runtime.coordinator_address")
    requested = env.get(ENV_DISTRIBUTED, "").strip().lower()
    if requested not in ("", "auto", "on", "off", "1", "0"):
        raise ConfigError(f"environment variable {ENV_DISTRIBUTED}={requested!r}: expected on, off or auto")
    if requested in ("off", "0"):
        return None
    if section.distributed == "on" or requested in ("on", "1"):
        return ClusterSpec("requested")
    if all(v in env for v in SLURM_VARS) and (_env_int(env, "SLURM_NTASKS") or 1) > 1:
        return ClusterSpec("slurm")
    if any(env.get(v) for v in TPU_POD_VARS):
        return ClusterSpec("tpu")
    return None


def initialize(section: RuntimeSection = RuntimeSection(), *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Start the multi-process runtime when the environment (or the arguments) call for one.

    Returns True when this is a multi-process run (started now or earlier), False for a single
    process. Safe to call again. Must run before any computation touches a device.
    """
    if jax.distributed.is_initialized():
        return True
    spec = detect_cluster(section, coordinator_address=coordinator_address, num_processes=num_processes,
                          process_id=process_id)
    if spec is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", section.cpu_collectives)
    try:
        jax.distributed.initialize(coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
                                   process_id=spec.process_id, initialization_timeout=section.initialization_timeout)
    except (RuntimeError, ValueError) as err:
        raise RuntimeError(f"jax.distributed.initialize failed for a {spec.source} cluster "
                           f"(coordinator {spec.coordinator_address or 'auto-detected'}): {err}") from err
    return True


def is_main_process() -> bool:
    """True on process 0: the one that writes logs, reports and other single-copy outputs."""
    return jax.process_index() == 0


def enable_compilation_cache(directory: str, *, min_compile_secs: float = 1.0, min_entry_bytes: int = 0) -> None:
    """Persist compiled programs in `directory` (local or gs://) so a restarted run skips compiling.

    Call before the first compilation; every process may share one directory.
    """
    if not directory.startswith("gs://"):
        os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_bytes))


# ---------------------------------------------------------------- meshes

def _canonical_order(names: Sequence[str]) -> tuple[str, ...]:
    if set(names) <= set(sharding.MESH_AXES):
        return tuple(a for a in sharding.MESH_AXES if a in names)
    return tuple(names)


def resolve_mesh_shape(shape: Mapping[str, int], total: int, what: str = "mesh") -> dict[str, int]:
    """`shape` with its -1 (at most one) replaced by what is left of `total`; the sizes must
    multiply to `total`."""
    sizes = {k: int(v) for k, v in shape.items()}
    known = math.prod(v for v in sizes.values() if v != -1)
    rest = [k for k, v in sizes.items() if v == -1]
    if len(rest) > 1:
        raise ConfigError(f"{what} {dict(shape)}: at most one size may be -1")
    if rest:
        if total % known:
            raise ConfigError(f"{what} {dict(shape)}: {total} does not divide by {known}")
        sizes[rest[0]] = total // known
    if math.prod(sizes.values()) != total:
        raise ConfigError(f"{what} {dict(shape)} needs {math.prod(sizes.values())}, there are {total}")
    return sizes


def _granules(devices: Sequence[jax.Device]) -> tuple[int, bool]:
    """(number of granules, whether they are processes): the slices of a TPU pod, else the
    processes (hosts of a GPU or CPU cluster)."""
    if devices[0].platform == "tpu":
        return len({d.slice_index for d in devices}), False
    return len({d.process_index for d in devices}), True


def make_mesh(shape: Mapping[str, int], dcn_shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto (GSPMD) axes; `dcn_shape` spreads axes over slices (TPU) or processes.

    `shape` sizes each axis within a slice (ICI), `dcn_shape` across slices (DCN); an axis of the
    mesh has size shape[a] * dcn_shape[a]; one size in each may be -1 for "the rest". Without a
    DCN axis this is `jaxbiqa.sharding.make_mesh`.
    """
    dcn = {k: int(v) for k, v in (dcn_shape or {}).items()}
    if all(v == 1 for v in dcn.values()):
        names = _canonical_order(list(shape))
        return sharding.make_mesh({n: shape[n] for n in names}, devices)
    devices = list(jax.devices() if devices is None else devices)
    count, by_process = _granules(devices)
    kind = "processes" if by_process else "slices"
    dcn = resolve_mesh_shape(dcn, count, f"dcn mesh over {count} {kind}")
    if len(devices) % count:
        raise ConfigError(f"{len(devices)} devices do not split evenly over {count} {kind}")
    per_granule = len(devices) // count
    ici = resolve_mesh_shape(shape, per_granule, f"mesh over the {per_granule} devices of each of the {kind}")
    names = _canonical_order(list(dict.fromkeys([*ici, *dcn])))
    grid = mesh_utils.create_hybrid_device_mesh([ici.get(n, 1) for n in names], [dcn.get(n, 1) for n in names],
                                                devices, process_is_granule=by_process)
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def rules_from_config(section: RuntimeSection) -> sharding.LogicalRules:
    """`DEFAULT_RULES` with the section's overrides ("fsdp", "data,fsdp", "" = replicated)."""
    table = dict(sharding.DEFAULT_RULES)
    unknown = sorted(set(section.rules) - set(table))
    if unknown:
        raise ConfigError(f"runtime.rules: unknown logical axes {unknown}; known: {sorted(table)}")
    for name, text in section.rules.items():
        axes = tuple(a.strip() for a in text.split(",") if a.strip())
        table[name] = axes[0] if len(axes) == 1 else (axes or None)
    return tuple(table.items())


class Runtime(NamedTuple):
    mesh: Mesh
    rules: sharding.LogicalRules


def setup(section: RuntimeSection) -> Runtime:
    """Compilation cache, multi-process start-up, then the mesh and rules of `section`."""
    if section.compilation_cache_dir:
        enable_compilation_cache(section.compilation_cache_dir,
                                 min_compile_secs=section.compilation_cache_min_compile_secs,
                                 min_entry_bytes=section.compilation_cache_min_entry_bytes)
    initialize(section)
    return Runtime(make_mesh(section.mesh, section.dcn_mesh), rules_from_config(section))


# ---------------------------------------------------------------- global batches

def batch_names(ndim: int, row_axis: int = 0) -> tuple[str | None, ...]:
    """Logical names of an array whose rows (axis `row_axis`) are batch rows."""
    return tuple("batch" if i == row_axis else None for i in range(ndim))


def global_array(local: Any, mesh: Mesh, names: Sequence[str | None],
                 rules: sharding.LogicalRules = sharding.DEFAULT_RULES) -> jax.Array:
    """One global array from each process's block of it; the logical `names` place it on `mesh`.

    Each process passes the rows its devices hold (contiguous blocks in process order, as
    `make_mesh` lays devices out), e.g. its grain shard of the batch.
    """
    local = np.asarray(local)
    if len(names) != local.ndim:
        raise ValueError(f"logical names {tuple(names)} do not fit an array of shape {local.shape}")
    spec = sharding.logical_to_spec(names, rules, mesh.axis_names)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def global_batch(local: Mapping[str, Any], mesh: Mesh, row_axes: Mapping[str, int] | None = None,
                 rules: sharding.LogicalRules = sharding.DEFAULT_RULES) -> dict[str, jax.Array]:
    """A dict of process-local batch arrays -> global arrays with rows split over the batch axes.

    `row_axes` names entries whose rows are not on axis 0 (e.g. {"positions": 1} for `[3, B, T]`).
    """
    row_axes = row_axes or {}
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        try:
            out[key] = global_array(value, mesh, batch_names(value.ndim, row_axes.get(key, 0)), rules)
        except ValueError as err:
            raise ValueError(f"batch entry {key!r} of local shape {value.shape} on process "
                             f"{jax.process_index()}: {err}") from err
    return out


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, row_axes: Mapping[str, int] | None = None,
                rules: sharding.LogicalRules = sharding.DEFAULT_RULES) -> dict[str, Any]:
    """Host arrays that every process holds in full -> global arrays with rows over the batch axes.

    Each process places only the blocks of its own devices (no communication). Axes that do not
    divide an entry's rows are left out of its sharding (`sharding.sharding_for`). Entries that
    already are `jax.Array`s are kept as they are.
    """
    row_axes = row_axes or {}
    out = {}
    for key, value in batch.items():
        if isinstance(value, jax.Array):
            out[key] = value
            continue
        value = np.asarray(value)
        place = sharding.sharding_for(value.shape, batch_names(value.ndim, row_axes.get(key, 0)), mesh, rules)
        out[key] = jax.make_array_from_callback(value.shape, place, lambda index, v=value: v[index])
    return out


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's device work goes: a mesh (None: one device) and its logical-axis rules."""

    mesh: Mesh | None = None
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES

    def global_batch(self, batch: Mapping[str, Any], row_axes: Mapping[str, int] | None = None) -> dict[str, Any]:
        """A batch every process holds in full -> global arrays on the mesh (`shard_batch`); as is without one."""
        return dict(batch) if self.mesh is None else shard_batch(batch, self.mesh, row_axes, self.rules)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The mesh and the rules as the context of the computations inside (nothing without a mesh)."""
        if self.mesh is None:
            yield
            return
        with jax.set_mesh(self.mesh), sharding.rules_scope(self.rules):
            yield


# ---------------------------------------------------------------- host values across processes

def allgather_objects(value: Any) -> list[Any]:
    """Every process's `value` (any picklable object), in process order, on every process.

    A collective: every process must call it at the same point. One process: `[value]`.
    """
    if jax.process_count() == 1:
        return [value]
    blob = np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray(blob.size, np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:blob.size] = blob
    blobs = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(blobs[i, :size].tobytes()) for i, size in enumerate(sizes)]


def gather_rows(local: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """Each process's batch rows concatenated in process order: the global batch, on every process.

    Any entries (numbers, strings) with rows on axis 0. None when any process passed None (e.g.
    its data ended), so that all processes stop together. A collective, like `allgather_objects`.
    """
    if jax.process_count() == 1:
        return None if local is None else dict(local)
    parts = allgather_objects(None if local is None else {k: np.asarray(v) for k, v in local.items()})
    if any(part is None for part in parts):
        return None
    keys = list(parts[0])
    if any(list(part) != keys for part in parts):
        raise ValueError(f"the processes' batches have different entries: {[sorted(part) for part in parts]}")
    return {key: np.concatenate([part[key] for part in parts]) for key in keys}


def fetch(tree: Any) -> Any:
    """`jax.device_get` of a pytree, also for arrays spread over several processes' devices (those
    are gathered: a collective, so every process must fetch the same arrays in the same order)."""
    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return jax.device_get(leaf)

    return jax.tree.map(one, tree)
