"""The trainer scaled out: the tiny warm start + GRPO run of tests/rl/trainer_helpers.py on one
device, on a 2x2x2 (data, fsdp, tensor) mesh of this process's 8 devices, and as `jaxbiqa train`
on 2 processes x 4 CPU devices through `launch/local_cluster.sh` (the real jax.distributed
runtime, data parallel across the processes). All three read the same global batches, draw the
same samples, and end with the same logged metrics and parameters; the 2-process checkpoint
restores in this single process.

The three runs share one config, batch sizes included (`data.global_batch_size=2`,
`train.sft_batch_size=4`: global counts, so each of the 2 processes reads half); only the runtime
(mesh, processes) differs, and the step counts, losses and parameters must agree. The warm start's
batch is 4 so that its rows divide the mesh's 4-way batch axes: rows that do not divide them get
padded shardings inside the model, where XLA computes wrong embedding gradients (test_padded_rows.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grain
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))
from trainer_helpers import make_assets, write_config_file  # noqa: E402

from jaxbiqa.checkpoint import Checkpointer, restore_target  # noqa: E402
from jaxbiqa.config import load_config  # noqa: E402
from jaxbiqa.data.pipeline import ensure_synthetic  # noqa: E402
from jaxbiqa.models.build import abstract_policy  # noqa: E402
from jaxbiqa.rl.trainer import REFERENCE_ITEM, Trainer  # noqa: E402

pytestmark = pytest.mark.slow  # one config trained on 1 device, 8 devices and 2 processes

REPO = Path(__file__).resolve().parents[2]
SFT_STEPS, GRPO_STEPS = 2, 2
FINAL = SFT_STEPS + GRPO_STEPS
MESH = '{"data": 2, "fsdp": 2, "tensor": 2}'
# the tiny model's single KV head does not split over tensor=2: replicated by an explicit rule
COMMON = ["train.max_steps=2", "train.sft_batch_size=4", "train.eval_after_sft=false", "train.samples_every=1",
          "train.samples_per_log=2", "train.tensorboard=false", "train.progress=false", "runtime.rules.kv_heads="]
# the same mesh as MESH, its data axis across the 2 processes; the batch sizes stay those of COMMON
TWO_PROCESSES = ['runtime.mesh={"fsdp": 2, "tensor": 2}', 'runtime.dcn_mesh={"data": 2}']
TIMINGS = ("_time", "_per_second")  # timings (and compile counters) are not results


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAXBIQA_", "SLURM_", "TPU_", "MEGASCALE_", "XLA_FLAGS", "JAX_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _outputs(folder: Path) -> dict:
    lines = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    predictions = [json.loads(line) for line in (folder / "eval" / "final" / "predictions.jsonl").read_text()
                   .splitlines()]
    return {"log": lines, "params": load_file(str(folder / "policy" / "model.safetensors")),
            "samples": (folder / "samples.log").read_text(), "predictions": predictions}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The three runs; the 2-process one runs in the background while the other two run here."""
    root = tmp_path_factory.mktemp("scaled")
    model_dir, data_dir = make_assets(root)
    config_file = write_config_file(root / "tiny.py", model_dir, data_dir, root / "unused")
    ensure_synthetic(data_dir, load_config(str(config_file)).data)  # once, before three runs read it
    out_file, err_file = root / "cluster.out", root / "cluster.err"  # files: a full pipe would stall the run
    with open(out_file, "w") as out, open(err_file, "w") as err:
        cluster = subprocess.Popen(
            [str(REPO / "launch" / "local_cluster.sh"), "-n", "2", "-d", "4", "-t", "500", "--",
             sys.executable, "-m", "jaxbiqa.cli", "train", "--config", str(config_file), "--quiet",
             *[f"--set={o}" for o in [*COMMON, *TWO_PROCESSES, f"output_dir={root / 'two'}"]]],
            env=_clean_env(), stdout=out, stderr=err)
    try:
        single = Trainer(load_config(str(config_file), [*COMMON, f"output_dir={root / 'one'}"]))
        assert single.placement.mesh is None and single.run().step == FINAL
        mesh_config = load_config(str(config_file), [*COMMON, f"output_dir={root / 'mesh'}", f"runtime.mesh={MESH}",
                                                     "runtime.distributed=off"])
        on_mesh = Trainer.from_runtime(mesh_config)
        assert dict(on_mesh.placement.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
        assert on_mesh.run().step == FINAL
        cluster.wait(timeout=600)
    finally:
        if cluster.poll() is None:
            cluster.kill()
    out = out_file.read_text()
    assert cluster.returncode == 0, out[-3000:] + err_file.read_text()[-6000:]
    return {"root": root, "config": config_file, "stdout": out,
            **{name: _outputs(root / name) for name in ("one", "mesh", "two")}}


def _assert_same_run(got: dict, expected: dict) -> None:
    assert [(r["step"], r["stage"]) for r in got["log"]] == [(r["step"], r["stage"]) for r in expected["log"]]
    assert [r["stage"] for r in expected["log"]] == ["sft"] * SFT_STEPS + ["grpo"] * GRPO_STEPS + ["eval"]
    for mine, theirs in zip(got["log"], expected["log"]):
        names = sorted(k for k, v in theirs.items() if isinstance(v, (int, float)) and not k.endswith(TIMINGS)
                       and not k.startswith("compile_count/"))
        assert set(names) <= set(mine)
        if theirs["stage"] != "eval":
            assert {"loss", "grad_norm"} <= set(names)
        for name in names:
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {theirs['step']} {name}")
    # the same samples (texts and their rewards) at every GRPO step, the same greedy evaluation
    assert got["samples"] == expected["samples"] and got["samples"].count("===== step") == GRPO_STEPS
    assert got["predictions"] == expected["predictions"]
    assert got["params"].keys() == expected["params"].keys()
    for name, value in expected["params"].items():
        np.testing.assert_allclose(got["params"][name], value, rtol=0, atol=1e-5, err_msg=name)


def test_trainer_on_a_2x2x2_mesh_matches_one_device(runs):
    _assert_same_run(runs["mesh"], runs["one"])


def test_two_processes_match_one_process(runs):
    _assert_same_run(runs["two"], runs["one"])


def test_only_process_zero_writes_reports(runs):
    folder = runs["root"] / "two"
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoints", "config.json", "eval", "policy", "samples.log", "summary.json", "train_log.jsonl"]
    assert json.loads((folder / "summary.json").read_text())["step"] == FINAL
    summaries = [line for line in runs["stdout"].splitlines() if line.endswith("}") and '"step"' in line]
    assert len(summaries) == 1 and summaries[0].startswith("[0] ")
    # every process saved its own data position in each checkpoint
    data = folder / "checkpoints" / str(FINAL) / "data"
    assert sorted(p.name for p in data.glob("process_*")) == ["process_0-of-2.json", "process_1-of-2.json"]


def test_two_process_checkpoint_restores_in_one_process(runs):
    config = load_config(str(runs["config"]), COMMON)
    model = abstract_policy(config.model)
    step_fn = Trainer(config)._grpo_update(model)
    abstract = step_fn.abstract_state(model)
    target = restore_target({"train": abstract})  # one device
    restored, references = {}, {}
    for name in ("one", "two"):
        with Checkpointer(runs["root"] / name / "checkpoints") as checkpointer:
            restored[name] = checkpointer.restore(target, step=FINAL)
            # the reference policy, saved once (collectively by the two processes) as GRPO started
            references[name] = checkpointer.restore_item(REFERENCE_ITEM, restore_target(abstract.params))
    one, two = restored["one"], restored["two"]
    assert two.step == FINAL and jax.tree.structure(two.state) == jax.tree.structure(one.state)
    leaves = jax.tree.leaves(two.state)
    assert all(leaf.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0]) for leaf in leaves)
    for got, expected in zip(leaves, jax.tree.leaves(one.state)):  # parameters, AdamW state
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-5)
    for got, expected in zip(jax.tree.leaves(references["two"]), jax.tree.leaves(references["one"]), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(jax.random.key_data(two.key), jax.random.key_data(one.key))
    assert two.config["runtime"]["dcn_mesh"] == {"data": 2}

    # the data position was saved per process: resuming it needs as many processes
    iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
    with Checkpointer(runs["root"] / "two" / "checkpoints") as checkpointer, \
            pytest.raises(ValueError, match="data position of 2 process"):
        checkpointer.restore(target, step=FINAL, data_iterator=iterator)
