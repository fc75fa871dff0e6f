"""`jaxbiqa train` in subprocesses on a tiny config: a run killed with SIGKILL whose latest
checkpoint is then left unreadable resumes from the one before and ends with the parameters of an
uninterrupted run; so does a killed run whose output dir is a bucket (a real GCS API emulator);
every step is logged once; Ctrl-C saves a checkpoint before the process exits (SIGTERM takes the
same path: tests/test_checkpoint.py).

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

import fsspec
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

sys.path.insert(0, str(Path(__file__).parent / "rl"))
from damage import truncate_array_files  # noqa: E402
from trainer_helpers import make_assets, write_config_file  # noqa: E402

from jaxbiqa.paths import as_path, is_local  # noqa: E402

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


def _train(root: Path, config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxbiqa.cli", "train", "--config", str(config), "--quiet", *extra],
                            env={**_env(root), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=root)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _fresh(output: Path | str):
    """`output` as a path whose listings are current: gcsfs caches a bucket's listings, which the
    training subprocess changes behind this process's back (the instance epath uses: its arguments)."""
    if not is_local(output):
        fsspec.filesystem("gcs", finalize_on_close=True).invalidate_cache()
    return as_path(output)


def _checkpoints(output: Path | str) -> list[int]:
    folder = _fresh(output) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def _log_steps(output: Path | str) -> list[int]:
    path = _fresh(output) / "train_log.jsonl"
    if not path.exists():
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
        time.sleep(0.2)


def _params(output: Path | str) -> dict[str, np.ndarray]:
    return load_safetensors((_fresh(output) / "policy" / "model.safetensors").read_bytes())


@pytest.fixture(scope="module")
def straight(assets) -> tuple[dict[str, np.ndarray], int]:
    """The parameters and last step of an uninterrupted run."""
    root, model_dir, data_dir = assets
    rc, out, err = _finish(_train(root, write_config_file(root / "straight.py", model_dir, data_dir, root / "straight")))
    assert rc == 0, err[-3000:]
    return _params(root / "straight"), json.loads(out.strip().splitlines()[-1])["step"]


def _killed_and_resumed(root: Path, config: Path, output: Path | str, straight, *, damage_latest: bool = False,
                        env: dict[str, str] | None = None) -> str:
    """Kill the run of `config` with SIGKILL mid-GRPO, resume it, check it ends as the straight run."""
    expected, final_step = straight
    process = _train(root, config, env=env)
    # killed in the GRPO stage, after its first checkpoint (the warm start is 2 steps, saves every 2);
    # with damage, once there is one before it to fall back to
    _wait_for(lambda: sum(s >= 2 for s in _checkpoints(output)) >= (3 if damage_latest else 2), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    stopped_at = max(_checkpoints(output))
    assert 4 <= stopped_at < final_step, "the kill must land mid-run"
    assert not (_fresh(output) / "policy").exists()
    if damage_latest:
        truncate_array_files(Path(output) / "checkpoints" / str(stopped_at))

    rc, out, err = _finish(_train(root, config, "--resume", env=env))
    assert rc == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["step"] == final_step
    resumed = _params(output)
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_allclose(resumed[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # every step logged once, the redone ones too
    assert sorted(_log_steps(output)) == list(range(1, final_step + 1))
    return err


def test_sigkill_then_resume_from_before_an_unreadable_checkpoint_matches_an_uninterrupted_run(assets, straight):
    root, model_dir, data_dir = assets
    output = root / "killed"
    err = _killed_and_resumed(root, write_config_file(root / "killed.py", model_dir, data_dir, output), output,
                              straight, damage_latest=True)
    unreadable = [p.name for p in (output / "checkpoints").iterdir() if p.name.endswith(".unreadable")]
    assert len(unreadable) == 1 and f"checkpoint step {unreadable[0].split('.')[0]} in" in err
    assert "cannot be read" in err and "resuming from step" in err


def test_a_run_in_a_bucket_is_killed_and_resumes_from_the_bucket(assets, straight, gcs):
    root, model_dir, data_dir = assets
    output = gcs.bucket() + "/tiny"
    config = write_config_file(root / "bucket.py", model_dir, data_dir, output)
    _killed_and_resumed(root, config, output, straight, env=gcs.environment())
    assert not (root / "gs:").exists()  # nothing went to a local folder named after the scheme


def test_ctrl_c_saves_a_checkpoint_before_exit(assets):
    root, model_dir, data_dir = assets
    output = root / "sigint"
    config = write_config_file(root / "sigint.py", model_dir, data_dir, output)
    process = _train(root, config)
    _wait_for(lambda: len(_log_steps(output)) >= 3, process)  # in the loop, past the first GRPO step
    process.send_signal(signal.SIGINT)
    rc, _, err = _finish(process)
    assert rc == PREEMPTED, err[-3000:]
    assert "SIGINT" in err and "Traceback" not in err
    last_logged = max(_log_steps(output))
    assert _checkpoints(output)[-1] == last_logged, "the step it stopped at is saved"
    assert not (output / "policy").exists(), "a pre-empted run does not finish"
    # and the run continues from there
    rc, out, err = _finish(_train(root, config, "--resume"))
    assert rc == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["step"] > last_logged
