"""jaxbiqa.distributed: start-up from the environment, meshes, global batches, compilation cache.

The multi-process test runs two real processes through `launch/local_cluster.sh` (jax.distributed
with gloo collectives, 4 CPU devices each) and compares them with this process's 8 devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from cluster_worker import MESH, ROWS, compute, inputs

from jaxbiqa import distributed
from jaxbiqa.config import ConfigError, RuntimeSection, from_dict
from jaxbiqa.sharding import DEFAULT_RULES

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("cluster_worker.py")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAXBIQA_", "SLURM_", "TPU_", "MEGASCALE_", "XLA_FLAGS", "JAX_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


# ---------------------------------------------------------------- two real processes

@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cluster")
    result = subprocess.run([str(REPO / "launch" / "local_cluster.sh"), "-n", "2", "-d", "4", "-t", "90", "--",
                             sys.executable, str(WORKER), str(out)],
                            env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_two_processes_see_one_global_batch_and_one_result(cluster_run):
    runs = [dict(np.load(cluster_run / f"process_{i}.npz")) for i in range(2)]
    x_full, w = inputs()
    assert [int(r["process_count"]) for r in runs] == [2, 2] and [int(r["device_count"]) for r in runs] == [8, 8]
    # each process fed only its own block of rows, and the global array is the whole batch
    assert [tuple(r["rows"]) for r in runs] == [(0, ROWS // 2), (ROWS // 2, ROWS)]
    for r in runs:
        np.testing.assert_array_equal(r["x"], x_full)
    for key in ("loss", "grad", "psum"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key])

    mesh = distributed.make_mesh(MESH)  # the same mesh on this process's 8 devices
    single = compute(mesh, distributed.global_batch({"x": x_full}, mesh)["x"], w)
    for key in ("loss", "grad", "psum"):
        np.testing.assert_allclose(runs[0][key], np.asarray(single[key]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(runs[0]["psum"], x_full.sum(0), rtol=1e-5)


def test_host_rows_and_device_arrays_reach_every_process(cluster_run):
    runs = [dict(np.load(cluster_run / f"process_{i}.npz")) for i in range(2)]
    x_full, _ = inputs()
    for r in runs:
        assert r["host_id"].tolist() == ["p", "pp", "pp"]  # process 0's row, then process 1's two
        np.testing.assert_array_equal(r["host_value"], [0, 10, 11])
        assert bool(r["ended"])  # one process out of data: all see the end
        np.testing.assert_array_equal(r["fetched_x"], x_full)
        np.testing.assert_array_equal(r["fetched_loss"], runs[0]["loss"])
        np.testing.assert_array_equal(r["placed"], x_full)
        assert str(r["placed_spec"]) == str(jax.sharding.PartitionSpec(("data", "fsdp"), None))


def test_only_the_main_process_writes_the_report(cluster_run):
    assert sorted(p.name for p in cluster_run.iterdir()) == ["process_0.npz", "process_1.npz", "report.json"]
    assert json.loads((cluster_run / "report.json").read_text()) == {"writer": 0, "processes": 2}


def test_hybrid_mesh_puts_the_dcn_axis_across_processes(cluster_run):
    run = np.load(cluster_run / "process_0.npz")
    assert list(run["hybrid_axes"]) == ["data", "fsdp", "tensor"] and list(run["hybrid_shape"]) == [2, 2, 2]
    owners = run["hybrid_owners"]
    assert (owners[0] == 0).all() and (owners[1] == 1).all()  # data index i = the devices of process i


# ---------------------------------------------------------------- start-up decisions

def test_explicit_cluster_from_environment_and_arguments():
    env = {"JAXBIQA_COORDINATOR": "10.0.0.1:1234", "JAXBIQA_NUM_PROCESSES": "4", "JAXBIQA_PROCESS_ID": "3"}
    assert distributed.detect_cluster(env=env) == distributed.ClusterSpec("explicit", "10.0.0.1:1234", 4, 3)
    # arguments win over the section, the section over the environment
    section = RuntimeSection(coordinator_address="h:1", num_processes=8, process_id=5)
    assert distributed.detect_cluster(section, env, process_id=0) == distributed.ClusterSpec("explicit", "h:1", 8, 0)


@pytest.mark.parametrize("env, message", [
    ({"JAXBIQA_COORDINATOR": "h:1", "JAXBIQA_NUM_PROCESSES": "2"}, "JAXBIQA_PROCESS_ID"),
    ({"JAXBIQA_COORDINATOR": "h:1", "JAXBIQA_NUM_PROCESSES": "two", "JAXBIQA_PROCESS_ID": "0"},
     "JAXBIQA_NUM_PROCESSES='two'"),
    ({"JAXBIQA_COORDINATOR": "h:1", "JAXBIQA_NUM_PROCESSES": "2", "JAXBIQA_PROCESS_ID": "2"}, "not in [0, 2)"),
    ({"JAXBIQA_NUM_PROCESSES": "2", "JAXBIQA_PROCESS_ID": "0"}, "without a coordinator"),
    ({"JAXBIQA_DISTRIBUTED": "maybe"}, "JAXBIQA_DISTRIBUTED"),
])
def test_incomplete_or_bad_cluster_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        distributed.detect_cluster(env=env)


def test_cluster_detection():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert distributed.detect_cluster(env={**slurm, "SLURM_NTASKS": "2"}) == distributed.ClusterSpec("slurm")
    assert distributed.detect_cluster(env={**slurm, "SLURM_NTASKS": "1"}) is None  # one task: nothing to join
    assert distributed.detect_cluster(env={"TPU_WORKER_HOSTNAMES": "a,b"}) == distributed.ClusterSpec("tpu")
    assert distributed.detect_cluster(env={"JAXBIQA_DISTRIBUTED": "on"}) == distributed.ClusterSpec("requested")
    assert distributed.detect_cluster(RuntimeSection(distributed="on"), env={}) == distributed.ClusterSpec("requested")
    assert distributed.detect_cluster(env={}) is None
    assert distributed.detect_cluster(env={**slurm, "SLURM_NTASKS": "2", "JAXBIQA_DISTRIBUTED": "off"}) is None
    off = RuntimeSection(distributed="off")
    assert distributed.detect_cluster(off, env={"JAXBIQA_COORDINATOR": "h:1", "JAXBIQA_NUM_PROCESSES": "2",
                                                "JAXBIQA_PROCESS_ID": "0"}) is None


def test_single_process_initialize_is_a_no_op():
    assert distributed.initialize(RuntimeSection(distributed="off")) is False
    assert not jax.distributed.is_initialized()
    assert distributed.is_main_process()


# ---------------------------------------------------------------- meshes, rules, batches

def test_mesh_with_the_rest_and_canonical_axis_order():
    mesh = distributed.make_mesh({"tensor": 2, "fsdp": -1, "data": 1})
    assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    same = distributed.make_mesh({"data": 1, "fsdp": -1, "tensor": 2}, {"data": 1})  # a DCN of ones is no DCN
    assert (same.devices == mesh.devices).all()


def test_hybrid_mesh_needs_as_many_processes_as_the_dcn_shape():
    with pytest.raises(ValueError, match="dcn mesh over 1 processes"):
        distributed.make_mesh({"fsdp": -1}, {"data": 2})
    hybrid = distributed.make_mesh({"fsdp": -1, "tensor": 2}, {"data": -1})  # -1: every process (here one)
    assert dict(hybrid.shape) == {"data": 1, "fsdp": 4, "tensor": 2}


def test_setup_builds_the_mesh_and_rules_of_the_section():
    runtime = distributed.setup(RuntimeSection(mesh={"data": 2, "fsdp": -1, "tensor": 2}, rules={"mlp": ""},
                                               distributed="off"))
    assert dict(runtime.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(runtime.rules)["mlp"] is None and dict(runtime.rules)["embed"] == "fsdp"


def test_rules_overrides():
    section = RuntimeSection(rules={"mlp": "", "batch": "data", "embed": "fsdp,tensor"})
    rules = dict(distributed.rules_from_config(section))
    assert rules["mlp"] is None and rules["batch"] == "data" and rules["embed"] == ("fsdp", "tensor")
    assert {k: v for k, v in rules.items() if k not in section.rules} == {
        k: v for k, v in DEFAULT_RULES if k not in section.rules}
    with pytest.raises(ValueError, match="unknown logical axes \\['mpl'\\]"):
        distributed.rules_from_config(RuntimeSection(rules={"mpl": "tensor"}))


@pytest.mark.parametrize("fields, message", [
    ({"mesh": {"data": 1, "fsdp": -1, "tensor": -1}}, "at most one -1"),
    ({"mesh": {"pipeline": 2}}, "'pipeline'"),
    ({"dcn_mesh": {"data": 0}}, "runtime.dcn_mesh sizes"),
    ({"rules": {"mlp": "model"}}, "'model'"),
    ({"num_processes": 2, "process_id": 2}, "process_id 2"),
])
def test_runtime_section_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        RuntimeSection(**fields)


def test_runtime_section_from_config_values():
    section = from_dict(RuntimeSection, {"mesh": '{"data": 2, "fsdp": -1}', "distributed": "on",
                                         "compilation_cache_min_compile_secs": "0.5"})
    assert section.mesh == {"data": 2, "fsdp": -1} and section.distributed == "on"
    with pytest.raises(ConfigError, match="runtime.mesh"):
        from_dict(RuntimeSection, {"mesh": '{"data": 2, "fsdp": -1, "tensor": -1}'}, where="runtime")


def test_shard_batch_and_gather_on_one_process():
    mesh = distributed.make_mesh(MESH)
    full = {"ids": np.arange(24).reshape(8, 3), "positions": np.arange(3 * 2 * 5).reshape(3, 2, 5),
            "kept": jax.numpy.ones(4)}
    batch = distributed.shard_batch(full, mesh, row_axes={"positions": 1})
    assert batch["ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    # 2 rows do not divide data x fsdp = 4: only the axis that divides them is kept
    assert batch["positions"].sharding.spec == jax.sharding.PartitionSpec(None, "data", None)
    assert batch["kept"] is full["kept"]
    for key in ("ids", "positions"):
        np.testing.assert_array_equal(np.asarray(batch[key]), full[key])
    assert distributed.gather_rows(None) is None
    assert distributed.gather_rows({"a": full["ids"]})["a"] is full["ids"]  # one process: nothing to gather
    assert distributed.allgather_objects({"x": 1}) == [{"x": 1}]
    fetched = distributed.fetch({"ids": batch["ids"], "none": None})
    assert isinstance(fetched["ids"], np.ndarray) and fetched["none"] is None


def test_global_batch_on_one_process():
    mesh = distributed.make_mesh(MESH)
    local = {"ids": np.arange(24).reshape(8, 3), "positions": np.zeros((3, 8, 5), np.int32)}
    batch = distributed.global_batch(local, mesh, row_axes={"positions": 1})
    assert batch["ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    assert batch["positions"].sharding.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(batch["ids"]), local["ids"])
    with pytest.raises(ValueError, match="batch entry 'ids' of local shape \\(6, 3\\)"):
        distributed.global_batch({"ids": np.zeros((6, 3))}, mesh)


# ---------------------------------------------------------------- compilation cache

def test_persistent_compilation_cache_is_written_and_hit(tmp_path):
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        from jaxbiqa.distributed import enable_compilation_cache
        hits = []
        jax.monitoring.register_event_listener(
            lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
        enable_compilation_cache({str(tmp_path / "cache")!r}, min_compile_secs=0)
        jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
        print(len(hits))
    """)
    env = _clean_env(JAX_PLATFORMS="cpu")
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[-1] == "0" and any((tmp_path / "cache").iterdir())
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert int(second.stdout.split()[-1]) >= 1  # the restarted process loaded the program from the cache
