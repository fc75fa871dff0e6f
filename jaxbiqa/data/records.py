"""The one record schema of jaxbiqa's data layer, MOS normalisation, and bad-record handling.

A record is a plain dict (it travels through grain, TFDS and the reward functions) holding every
field of `FIELDS`, always: absent text is "" and absent numbers are NaN, so batches have a fixed
set of columns.

* `id`: unique within a dataset (usually the image file name); `image`: a path relative to the
  dataset root (or absolute), or the encoded bytes; `dataset`, `split`.
* `mos`: the score as the dataset publishes it; `mos_norm`: that score on 1-5, HIGHER IS BETTER
  for every dataset: `1 + 4 (mos - low) / (high - low)`, or `1 + 4 (high - mos) / (high - low)`
  for lower-is-better scores (CSIQ DMOS). NaN when the source has no score (Q-Reasoning test,
  conversation data); the pipeline then rejects the record unless `require_mos` is off.
* Q-Reasoning's human fields: `description`, `good_aspect`, `bad_aspect`, `instruction` (English
  text) and `good_impact`, `bad_impact`, `edit_quality`, `quality` (numbers).
* Q-Insight's degradation labels `distortion` (noise / compression / blur / darken, and for the
  synthetic set and KADID also brighten / contrast / saturation / color / spatial / sharpness)
  and `severity` (slight / moderate / obvious / serious / catastrophic; "none" for clean images).
* `question` / `reference`: a user turn and a reference answer from conversation data (SFT).

`MOS_SCALES` is the normalisation table: (low, high) is the min and max of the MOS over the whole
official label file (method.md section 9), measured on the released files, except where marked
"nominal" (the scale's documented end points, used when the published min/max is not known).
`scale_from_data` computes min/max from the records instead (`DataSection.mos_scale = "data"`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from jaxbiqa.config import UserError

log = logging.getLogger("jaxbiqa.data")

OnBad = Literal["raise", "skip"]

TEXT_FIELDS: tuple[str, ...] = ("description", "good_aspect", "bad_aspect", "instruction")
NUMBER_FIELDS: tuple[str, ...] = ("good_impact", "bad_impact", "edit_quality", "quality")
OPTIONAL_STRING_FIELDS: tuple[str, ...] = (*TEXT_FIELDS, "distortion", "severity", "question", "reference")
STRING_FIELDS: tuple[str, ...] = ("id", "dataset", "split", *OPTIONAL_STRING_FIELDS)
FLOAT_FIELDS: tuple[str, ...] = ("mos", "mos_norm", *NUMBER_FIELDS)
FIELDS: tuple[str, ...] = ("image", *STRING_FIELDS, *FLOAT_FIELDS)

NORM_RANGE: tuple[float, float] = (1.0, 5.0)  # `mos_norm`, the normalised target: 5 = best

SEVERITIES: tuple[str, ...] = ("slight", "moderate", "obvious", "serious", "catastrophic")


@dataclasses.dataclass(frozen=True)
class MosScale:
    low: float
    high: float
    lower_is_better: bool = False
    note: str = ""

    def normalise(self, mos: float) -> float:
        """The score on 1-5, 5 = best."""
        frac = (mos - self.low) / (self.high - self.low)
        return 1.0 + 4.0 * (1.0 - frac if self.lower_is_better else frac)

    def contains(self, mos: float, tolerance: float = 1e-6) -> bool:
        slack = tolerance * max(1.0, abs(self.high - self.low))
        return self.low - slack <= mos <= self.high + slack


MOS_SCALES: dict[str, MosScale] = {
    # KonIQ-10k MOS_zscore column, the method's target (method.md section 9)
    "koniq": MosScale(3.91176, 88.38889, note="MOS_zscore min/max"),
    # KonIQ-10k MOS column (the 1-5 crowd mean), for users who pick that column
    "koniq_mos": MosScale(1.09615384615385, 4.31, note="MOS column min/max"),
    "spaq": MosScale(2.0, 96.0, note="MOS min/max of the 11,125 images"),
    "kadid": MosScale(1.0, 4.93, note="dmos min/max (a MOS on 1-5, higher is better)"),
    "live_challenge": MosScale(3.42, 92.4319526627219, note="min/max over the 1,169 images"),
    "csiq": MosScale(0.0, 1.0, lower_is_better=True, note="DMOS in [0, 1], lower is better"),
    "pipal": MosScale(916.7136, 1835.9856, note="Elo min/max of the public training labels"),
    "agiqa3k": MosScale(0.0, 5.0, note="nominal: mos_quality is rated on 0-5"),
    "synthetic": MosScale(1.0, 5.0, note="nominal: the synthetic target is already on 1-5"),
}


def scale_from_data(values: Iterable[float], lower_is_better: bool = False,
                    note: str = "min/max of the data") -> MosScale:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2 or min(finite) == max(finite):
        raise UserError(f"cannot compute a MOS scale from {len(finite)} finite value(s) with no spread")
    return MosScale(min(finite), max(finite), lower_is_better, note)


# ---------------------------------------------------------------- bad records

class BadRecordError(UserError):
    """One record that cannot be used; `where` names the file and row (or the record id)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self):  # picklable, so it crosses from grain's worker processes intact
        return type(self), (self.where, self.reason)


@dataclasses.dataclass
class SkipReport:
    """Records skipped under `on_bad_record="skip"`: (where, reason) pairs, in order."""

    entries: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.entries.append((where, reason))

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self, label: str = "data") -> str:
        if not self.entries:
            return f"{label}: no record skipped"
        kinds = Counter(reason.split(":")[0] for _, reason in self.entries)
        head = "; ".join(f"{where}: {reason}" for where, reason in self.entries[:5])
        more = f" (+{len(self.entries) - 5} more)" if len(self.entries) > 5 else ""
        return (f"{label}: skipped {len(self.entries)} bad record(s) "
                f"({', '.join(f'{k} x{n}' for k, n in kinds.most_common())}): {head}{more}")


class RecordGuard:
    """Applies the bad-record policy: `with guard(where): ...` re-raises a BadRecordError (with
    `where` in front) under "raise", or records it in `report` and skips the block under "skip"."""

    def __init__(self, on_bad: OnBad = "raise", report: SkipReport | None = None):
        if on_bad not in ("raise", "skip"):
            raise ValueError(f"on_bad_record must be 'raise' or 'skip', got {on_bad!r}")
        self.on_bad = on_bad
        self.report = report if report is not None else SkipReport()

    @contextmanager
    def __call__(self, where: str) -> Iterator[None]:
        try:
            yield
        except BadRecordError as err:
            located = err if err.where.startswith(where) else BadRecordError(f"{where}: {err.where}", err.reason)
            if self.on_bad == "raise":
                raise located from None
            self.report.add(located.where, located.reason)


# ---------------------------------------------------------------- building and checking records

def parse_float(value: Any, what: str) -> float:
    """A finite float from a cell/JSON value, or BadRecordError naming `what`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRecordError(what, "missing value")
    if isinstance(value, bool):
        raise BadRecordError(what, f"not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRecordError(what, f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise BadRecordError(what, f"not a finite number: {value!r}")
    return number


def optional_float(value: Any, what: str) -> float:
    """Like parse_float, but a missing value is NaN."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return parse_float(value, what)


def make_record(*, id: str, image: str | bytes, dataset: str, split: str, mos: float = math.nan,
                scale: MosScale | None = None, mos_norm: float | None = None, **fields: Any) -> dict[str, Any]:
    """A complete record: every field of FIELDS, `mos_norm` from `scale` unless given.

    Raises BadRecordError for a MOS outside `scale` (usually the wrong score column) or a given
    `mos_norm` outside 1-5, and UserError for a field name that is not in the schema.
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise UserError(f"unknown record field(s) {sorted(unknown)}; the schema is {FIELDS}")
    if not id:
        raise BadRecordError("record", "empty id")
    if mos_norm is None:
        mos_norm = math.nan
        if math.isfinite(mos) and scale is not None:
            if not scale.contains(mos):
                raise BadRecordError(f"id {id!r}", f"out of range: MOS {mos} is outside [{scale.low}, {scale.high}] "
                                                   f"of {dataset} ({scale.note}); wrong score column or scale?")
            mos_norm = scale.normalise(mos)
    elif math.isfinite(mos_norm) and not NORM_RANGE[0] - 1e-6 <= mos_norm <= NORM_RANGE[1] + 1e-6:
        raise BadRecordError(f"id {id!r}", f"out of range: mos_norm {mos_norm} is outside {list(NORM_RANGE)} "
                                           "(the normalised score; give `mos` with its scale instead)")
    record: dict[str, Any] = {"image": image, "id": str(id), "dataset": dataset, "split": split}
    for name in OPTIONAL_STRING_FIELDS:
        value = fields.get(name)
        record[name] = "" if value is None else str(value)
    record["mos"] = float(mos)
    record["mos_norm"] = float(mos_norm)
    for name in NUMBER_FIELDS:
        record[name] = float(fields[name]) if fields.get(name) is not None else math.nan
    return record


def check_unique_ids(records: list[dict[str, Any]], guard: RecordGuard, wheres: list[str]) -> list[dict[str, Any]]:
    """Drops (skip) or rejects (raise) records whose (dataset, id) was already seen; `wheres`
    names each record's row for the message."""
    seen: dict[tuple[str, str], str] = {}
    kept = []
    for record, where in zip(records, wheres, strict=True):
        key = (record["dataset"], record["id"])
        with guard(where):
            if key in seen:
                raise BadRecordError(f"id {record['id']!r}", f"duplicate id: also at {seen[key]}")
            seen[key] = where
            kept.append(record)
    return kept


def image_path(root: str | os.PathLike, relative: str, what: str) -> str:
    """`root/relative` as a string, rejecting a path that leaves the dataset root.

    The check is lexical (no symlinks followed), so a root made of symlinked folders still works.
    """
    if not relative or not relative.strip():
        raise BadRecordError(what, "empty image path")
    root_norm = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(root_norm, relative))
    if os.path.commonpath([root_norm, full]) != root_norm:
        raise BadRecordError(what, f"path escapes the dataset root: {relative!r} is outside {root_norm}")
    return full


def resolve_root(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root {str(path)!r} is not a directory")
    return path


def summarise(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per dataset/split and the MOS range, for `jaxbiqa data inspect` and logs."""
    rows = list(records)
    mos = [r["mos"] for r in rows if math.isfinite(r["mos"])]
    norm = [r["mos_norm"] for r in rows if math.isfinite(r["mos_norm"])]
    return {
        "count": len(rows),
        "datasets": dict(Counter(r["dataset"] for r in rows)),
        "splits": dict(Counter(r["split"] for r in rows)),
        "with_mos": len(mos),
        "mos_range": [min(mos), max(mos)] if mos else None,
        "mos_norm_range": [min(norm), max(norm)] if norm else None,
        "with_human_text": sum(1 for r in rows if any(r[f].strip() for f in TEXT_FIELDS)),
        "distortions": dict(Counter(r["distortion"] for r in rows if r["distortion"])),
    }
