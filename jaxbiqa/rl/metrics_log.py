"""What a training run reports while it runs, all under its output directory.

* `train_log.jsonl`: one JSON object per logged step, `{"step", "stage", ...numbers}` (nested
  dicts allowed: `jaxbiqa.eval.plots.read_training_log` flattens them to `a/b`); the string
  `stage` ("sft", "grpo", "eval") splits the curves of `plots.training_figure`.
* `tensorboard/`: the same scalars as TensorBoard event files (`stage/name` tags), written with
  `tensorboardX` when it is installed (a small pure-Python package); without it the run notes once
  that TensorBoard output is off and carries on.
* `samples.log`: a few completions every N steps, readable as text.
* a tqdm progress bar with ETA on stderr; the JSON lines stay the machine-readable record.
Only the main process (JAX process 0) writes. A resumed run (`initial_step` > 0) first cuts the
log and the samples back to that step (and TensorBoard purges later events), so every step
appears once. An object store cannot append: for a `gs://` output dir the files are kept in a
local folder and uploaded whole by `sync` (the trainer calls it with every checkpoint) and `close`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxbiqa.paths import PathLike, as_path, atomic_write, is_local

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


_SAMPLES_HEADER = re.compile(r"^===== step (\d+) ")


def _cut_log(text: str, step: int) -> str:
    """The JSON-lines log without records after `step` (a torn last line is dropped too)."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    return "".join(kept)


def _cut_samples(text: str, step: int) -> str:
    """The samples log up to the first block of a step after `step`."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = _SAMPLES_HEADER.match(line)
        if match and int(match.group(1)) > step:
            return "".join(lines[:i])
    return text


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

    def __init__(self, output_dir: PathLike, *, total_steps: int, initial_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.directory = as_path(output_dir)
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.local = Path(self.directory) if is_local(self.directory) else Path(tempfile.mkdtemp(prefix="jaxbiqa-"))
        for name, cut in ((LOG_FILE, _cut_log), (SAMPLES_FILE, _cut_samples)):
            kept = self.directory / name
            if kept.exists():
                text = kept.read_text(encoding="utf-8")
                atomic_write(self.local / name, cut(text, initial_step) if initial_step else "")
        self._log = open(self.local / LOG_FILE, "a", encoding="utf-8")
        self._samples = open(self.local / SAMPLES_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard event files (pip install tensorboardX); "
                            "the JSON-lines log %s has every metric", self.directory / LOG_FILE)
            else:
                # events after the resumed step are purged by TensorBoard
                self._tb = SummaryWriter(str(self.local / TB_DIR), purge_step=initial_step + 1 if initial_step else None)
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

    def sync(self) -> None:
        """Make what was written so far durable in the output dir (uploaded when it is remote)."""
        if not self.enabled:
            return
        for handle in (self._log, self._samples, self._tb):
            if handle is not None:
                handle.flush()
        if not is_local(self.directory):
            self._upload()

    def _upload(self) -> None:
        for path in sorted(self.local.rglob("*")):
            if path.is_file():
                atomic_write(self.directory / path.relative_to(self.local).as_posix(), path.read_bytes())

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._log.close()
        self._samples.close()
        if not is_local(self.directory):
            self._upload()
            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
