"""`jaxbiqa train` in subprocesses on a tiny config: a run killed with SIGKILL and resumed ends with
the parameters of an uninterrupted run, and SIGTERM saves a checkpoint before the process exits.

The processes share a persistent compilation cache, so only the first one compiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent / "rl"))
from trainer_helpers import make_assets, write_config_file  # noqa: E402

pytestmark = pytest.mark.slow  # subprocess trainings killed and resumed

PREEMPTED = 75


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cmd")
    model_dir, data_dir = make_assets(root)
    return root, model_dir, data_dir


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)  # one device, as a user's run
    return env


def _train(root: Path, config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxbiqa.cli", "train", "--config", str(config), "--quiet", *extra],
                            env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _checkpoints(output: Path) -> list[int]:
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _log_steps(output: Path) -> list[int]:
    path = output / "train_log.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in lines if r["stage"] != "eval"]


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the run ended (rc {process.returncode}) before the condition held:\n{err[-3000:]}")
        if time.monotonic() > end:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def _params(output: Path) -> dict[str, np.ndarray]:
    return load_file(str(output / "policy" / "model.safetensors"))


def test_sigkill_then_resume_matches_an_uninterrupted_run(assets):
    root, model_dir, data_dir = assets
    straight_out, killed_out = root / "straight", root / "killed"
    straight = write_config_file(root / "straight.py", model_dir, data_dir, straight_out)
    killed = write_config_file(root / "killed.py", model_dir, data_dir, killed_out)

    rc, out, err = _finish(_train(root, straight))
    assert rc == 0, err[-3000:]
    final_step = json.loads(out.strip().splitlines()[-1])["step"]

    process = _train(root, killed)
    # killed in the GRPO stage, after its first checkpoint (the warm start is 2 steps, saves every 2)
    _wait_for(lambda: any(s >= 4 for s in _checkpoints(killed_out)), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    stopped_at = max(_checkpoints(killed_out))
    assert 4 <= stopped_at < final_step, "the kill must land mid-run"
    assert not (killed_out / "policy").exists()

    rc, out, err = _finish(_train(root, killed, "--resume"))
    assert rc == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["step"] == final_step
    expected, resumed = _params(straight_out), _params(killed_out)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_allclose(resumed[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # the resumed run logged the steps after the checkpoint, once each
    steps = _log_steps(killed_out)
    assert sorted(set(steps)) == list(range(1, final_step + 1))


def test_sigterm_saves_a_checkpoint_before_exit(assets):
    root, model_dir, data_dir = assets
    output = root / "sigterm"
    config = write_config_file(root / "sigterm.py", model_dir, data_dir, output)
    process = _train(root, config)
    _wait_for(lambda: len(_log_steps(output)) >= 3, process)  # in the loop, past the first GRPO step
    process.send_signal(signal.SIGTERM)
    rc, _, err = _finish(process)
    assert rc == PREEMPTED, err[-3000:]
    assert "SIGTERM" in err
    last_logged = max(_log_steps(output))
    assert _checkpoints(output)[-1] == last_logged, "the step it stopped at is saved"
    assert not (output / "policy").exists(), "a pre-empted run does not finish"
    # and the run continues from there
    rc, out, err = _finish(_train(root, config, "--resume"))
    assert rc == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["step"] > last_logged
