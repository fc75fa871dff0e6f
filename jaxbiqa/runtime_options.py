"""The `runtime` section of the config: devices, mesh, multi-process start-up, compilation cache.

No heavy imports here (the global config holds this section); `jaxbiqa.distributed` acts on it.

Mesh: `mesh` gives the axis sizes over the devices of one slice (or one host, or everything when
`dcn_mesh` is empty); `dcn_mesh` gives how many slices (TPU) or processes (GPU / CPU hosts) each
axis spans across the slower data-centre network. One size in each may be -1, "the rest". The
device count of an axis is the product of both, e.g. mesh {"data": 1, "fsdp": -1, "tensor": 1}
with dcn_mesh {"data": 4}: four slices, data-parallel across them, FSDP within each.

Multi-process: with `distributed="auto"` the runtime is started when the environment says so:
an explicit coordinator (these fields or JAXBIQA_COORDINATOR / JAXBIQA_NUM_PROCESSES /
JAXBIQA_PROCESS_ID), a SLURM step of more than one task, or a TPU pod (TPU_WORKER_HOSTNAMES /
MEGASCALE_COORDINATOR_ADDRESS set, or JAXBIQA_DISTRIBUTED=on as `launch/tpu_pod.sh` sets).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

MESH_AXES = ("data", "fsdp", "tensor")  # the same names as jaxbiqa.sharding.MESH_AXES


def _check_shape(name: str, shape: dict[str, int], problems: list[str]) -> None:
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        problems.append(f"{name} axes {unknown} are not among {MESH_AXES}")
    sizes = list(shape.values())
    if any(s == 0 or s < -1 for s in sizes):
        problems.append(f"{name} sizes must be >= 1 or -1 (the rest), got {shape}")
    if sizes.count(-1) > 1:
        problems.append(f"{name} may have at most one -1 size, got {shape}")


@dataclasses.dataclass(frozen=True)
class RuntimeSection:
    # mesh axis sizes within a slice (ICI) and across slices / hosts (DCN); see the module docstring
    mesh: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": 1, "fsdp": -1, "tensor": 1})
    dcn_mesh: dict[str, int] = dataclasses.field(default_factory=dict)  # empty: one slice / no DCN axis
    # logical axis -> mesh axes, overriding jaxbiqa.sharding.DEFAULT_RULES: "fsdp", "data,fsdp",
    # or "" for replicated; e.g. --set runtime.rules.mlp=
    rules: dict[str, str] = dataclasses.field(default_factory=dict)

    # multi-process start-up (jax.distributed.initialize)
    distributed: Literal["auto", "on", "off"] = "auto"  # on: always (JAX detects the cluster); off: never
    coordinator_address: str = ""      # host:port of process 0; "" = JAXBIQA_COORDINATOR or auto-detection
    num_processes: int = 0             # 0 = JAXBIQA_NUM_PROCESSES or auto-detection
    process_id: int = -1               # -1 = JAXBIQA_PROCESS_ID or auto-detection
    initialization_timeout: int = 300  # seconds to wait for every process to join
    cpu_collectives: Literal["gloo", "mpi"] = "gloo"  # cross-process collectives of CPU devices

    # persistent XLA compilation cache (a local folder or gs://...); "" = off, or JAX_COMPILATION_CACHE_DIR
    compilation_cache_dir: str = ""
    compilation_cache_min_compile_secs: float = 1.0  # cache only programs that took this long to compile
    compilation_cache_min_entry_bytes: int = 0       # and whose executable is at least this big

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_shape("runtime.mesh", self.mesh, problems)
        _check_shape("runtime.dcn_mesh", self.dcn_mesh, problems)
        unknown = sorted({a for v in self.rules.values() for a in v.split(",") if a.strip()} - set(MESH_AXES))
        if unknown:
            problems.append(f"runtime.rules name mesh axes {unknown} not among {MESH_AXES}")
        if self.num_processes < 0 or self.process_id < -1:
            problems.append(f"runtime.num_processes must be >= 0 and process_id >= -1, got "
                            f"{self.num_processes}, {self.process_id}")
        if self.num_processes and self.process_id >= self.num_processes:
            problems.append(f"runtime.process_id {self.process_id} must be < num_processes {self.num_processes}")
        if self.initialization_timeout < 1:
            problems.append(f"runtime.initialization_timeout must be >= 1 s, got {self.initialization_timeout}")
        if self.compilation_cache_min_compile_secs < 0 or self.compilation_cache_min_entry_bytes < 0:
            problems.append("runtime.compilation_cache_min_compile_secs and _min_entry_bytes must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))
