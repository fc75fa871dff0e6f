"""The run's logs: a resumed run cuts them back to its step (each step logged once), and a `gs://`
output dir gets them uploaded at each sync (a real GCS API emulator)."""

import json

import pytest

from jaxbiqa.paths import as_path
from jaxbiqa.rl.metrics_log import LOG_FILE, SAMPLES_FILE, MetricsLogger


def _log(logger_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (as_path(logger_dir) / LOG_FILE).read_text().splitlines()]


def _write(logger: MetricsLogger, steps) -> None:
    for step in steps:
        logger.write(step, "grpo", {"loss": float(step)})
        logger.samples(step, "grpo", [{"completion": f"text of step {step}"}])


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_resume_cuts_the_logs_back_to_the_resumed_step(where, tmp_path, request):
    out = str(tmp_path) if where == "local" else request.getfixturevalue("bucket") + "/run"
    with MetricsLogger(out, total_steps=9, tensorboard=False, progress=False) as logger:
        _write(logger, range(1, 6))
        logger.sync()
        assert _log(out) == [1, 2, 3, 4, 5]  # durable before the run ends
    with MetricsLogger(out, total_steps=9, initial_step=3, tensorboard=False, progress=False) as logger:
        _write(logger, range(4, 8))
    assert _log(out) == list(range(1, 8))
    samples = (as_path(out) / SAMPLES_FILE).read_text()
    assert [samples.count(f"text of step {step}\n") for step in range(1, 8)] == [1] * 7


def test_a_torn_last_line_is_dropped_on_resume(tmp_path):
    (tmp_path / LOG_FILE).write_text('{"step": 1, "stage": "sft"}\n{"step": 2, "st')
    with MetricsLogger(tmp_path, total_steps=3, initial_step=1, tensorboard=False, progress=False) as logger:
        logger.write(2, "sft", {"loss": 0.5})
    assert _log(tmp_path) == [1, 2]
