"""Skips the training run records, named apart: a bad record skipped by the data pipeline
(`skipped_records` so far in the step's `epoch`) and an update skipped for a non-finite loss (`skipped_update`,
`skipped_updates`); a run whose updates keep being skipped stops with an error (exit status 2).

The probe of issue 18: a NaN learning rate trained an all-NaN policy, every update after the first
skipped, exit code 0. A NaN is now refused by the config; a learning rate of 1e30 (finite, allowed)
does the same to the parameters in one update."""

from __future__ import annotations

import json

import pytest
from trainer_helpers import make_assets, write_config_file, write_image_records

from jaxbiqa import cli

pytestmark = pytest.mark.slow  # one warm start compiled (about 30 s on 2 cores)


def test_a_run_of_skipped_updates_stops_and_skipped_records_are_logged(tmp_path, capsys):
    model_dir, _ = make_assets(tmp_path)
    data = tmp_path / "data"
    write_image_records(data, 5)
    (data / "images" / "4.png").write_bytes(b"not a PNG")
    out = tmp_path / "out"
    config = write_config_file(tmp_path / "tiny.py", model_dir, data, out)
    args = ["train", "--config", str(config), "--quiet"]
    for assignment in [f'data.train=["jsonl:{data / "index.jsonl"}"]', "data.on_bad_record=skip", "sft.steps=4",
                       "sft.optim.learning_rate=1e30", "train.max_consecutive_skipped_updates=0",
                       "train.eval_after_sft=false"]:
        args += ["--set", assignment]
    assert cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jaxbiqa train: error: ")]
    assert err == ["jaxbiqa train: error: sft: the updates of steps 2..4 were all skipped (a non-finite loss or "
                   "gradient; the parameters are still those of step 1): lower the learning rate, or check the "
                   "data (train.max_consecutive_skipped_updates=0 stops a run after that many)"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["skipped_update"] for r in steps] == [0, 1, 1, 1] and steps[-1]["skipped_updates"] == 3
    assert "NaN" not in (out / "config.json").read_text()
    # 4 good records in batches of 2: each epoch (2 steps) skips the one bad record
    assert [(r["epoch"], r["skipped_records"]) for r in steps] == [(0, 1), (0, 1), (1, 1), (1, 1)]
