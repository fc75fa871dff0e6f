"""What a training run reports while it runs, all under its output directory.

* `train_log.jsonl`: one JSON object per logged step, `{"step", "stage", ...numbers}` (nested
  dicts allowed: `jaxbiqa.eval.plots.read_training_log` flattens them to `a/b`); the string
  `stage` ("sft", "grpo", "eval") splits the curves of `plots.training_figure`.
* `tensorboard/`: the same scalars as TensorBoard event files (`stage/name` tags), written with
  `tensorboardX` when it is installed (a small pure-Python package); without it the run notes once
  that TensorBoard output is off and carries on.
* `samples.log`: a few completions every N steps, readable as text.
* a tqdm progress bar with ETA on stderr; the JSON lines stay the machine-readable record.
Only the main process (JAX process 0) writes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("jaxbiqa.train")

LOG_FILE = "train_log.jsonl"
SAMPLES_FILE = "samples.log"
TB_DIR = "tensorboard"


def _plain(value: Any) -> Any:
    """JSON-ready numbers: numpy / JAX scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, bool)) or value is None:
        return value
    try:
        number = np.asarray(value).item()
    except (TypeError, ValueError):
        return str(value)
    if isinstance(number, float) and not math.isfinite(number):
        return None
    return number


def _scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class MetricsLogger:
    """JSON lines + TensorBoard + sample log + progress bar for one run (see the module docstring)."""

    def __init__(self, output_dir: str | Path, *, total_steps: int, initial_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.directory = Path(output_dir)
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = open(self.directory / LOG_FILE, "a", encoding="utf-8")
        self._samples = open(self.directory / SAMPLES_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard event files (pip install tensorboardX); "
                            "the JSON-lines log %s has every metric", self.directory / LOG_FILE)
            else:
                self._tb = SummaryWriter(str(self.directory / TB_DIR))
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True)

    def write(self, step: int, stage: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record; returns it as written."""
        record = {"step": int(step), "stage": stage, **_plain(metrics)}
        if not self.enabled:
            return record
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        if self._tb is not None:
            for name, value in _scalars(record).items():
                if name != "step":
                    self._tb.add_scalar(f"{stage}/{name}", value, step)
        return record

    def samples(self, step: int, stage: str, entries: Sequence[Mapping[str, Any]]) -> None:
        """Write sample completions: each entry's fields as `key: value` lines, texts indented."""
        if not self.enabled or not entries:
            return
        lines = [f"===== step {step} ({stage}) ====="]
        for i, entry in enumerate(entries):
            lines.append(f"--- sample {i}")
            for key, value in entry.items():
                if isinstance(value, str) and "\n" in value:
                    lines.append(f"{key}:")
                    lines.extend("    " + row for row in value.splitlines())
                else:
                    lines.append(f"{key}: {_plain(value)}")
        self._samples.write("\n".join(lines) + "\n\n")
        self._samples.flush()
        if self._tb is not None:
            self._tb.add_text(f"{stage}/samples", "\n\n".join(f"```\n{e}\n```" for e in entries), step)

    def advance(self, steps: int = 1, **postfix: Any) -> None:
        """Move the progress bar; `postfix` values are shown beside it."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._log.close()
        self._samples.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
