"""Read prediction files: the authors' released layout and jaxbiqa's own JSON-lines files.

Score columns (all on the model's 1-5 rating scale):

* ``overall_score``   pass 1, the model sees the image (the "image" column);
* ``reasoning_score`` pass 2 fed the pass-1 text before ``<answer>`` ("caption+think");
* ``caption_score``   pass 2 fed the pass-1 text before ``<think>`` ("caption only").

Released layout (``AnonymousUserPublish/Bridging-Image-Text-Gap-for-BIQA``)
    ``<model>/<dataset>/p0.json … pN.json``: one shard per GPU, each a JSON list of records
    ``{"image", "gt_score", "overall_score", "reasoning_score", "perception_text", "reasoning_text"}``;
    ``<model>/<dataset>_caption/pN.json`` holds ``{"image", "gt_score", "caption_score",
    "reasoning_text"}``. Key sets differ between folders; scores may be numbers or numeric
    strings (CSIQ's ``gt_score`` is a string).

jaxbiqa JSON-lines schema (``*.jsonl``, written by ``jaxbiqa eval``): one JSON object per line,

    dataset          str, required; several datasets may share a file
    image            str, required; unique within a dataset
    gt_score         number (or numeric string), required; the target on its native scale
                     (MOS, or DMOS for lower-is-better sets)
    overall_score    number or null (null = unparsable output); optional column
    reasoning_score  number or null; optional column
    caption_score    number or null; optional column
    perception_text  str, optional: the full pass-1 completion
                     ``<caption>…</caption><think>…</think><answer>{"rating": x}</answer>``
    reasoning_text   str, optional: the pass-2 completion
    caption_answer_text  str, optional: the caption-only pass-2 completion

Other keys are ignored. Blank lines are skipped.

Accepted paths:

* a single ``.json`` shard (dataset = its folder's name) or a ``.jsonl`` file;
* a dataset folder: a directory holding ``p<N>.json`` shards (other files there are ignored);
* a model folder: a directory whose sub-folders are dataset folders, plus any ``.jsonl`` files
  directly inside it.

A dataset named ``X_caption`` (folder or JSON-lines ``dataset``) is grouped with ``X``: its
``caption_score`` becomes X's caption-only column, joined by image name. Where ``X`` also
carries an inline ``caption_score`` (the authors' ``koniq/`` rows do, with slightly different
values from a re-run), the ``X_caption`` folder takes precedence: it is the source of the
authors' caption-only figures; a note records the override.

Errors (`PredictionFormatError`) name the file and the record index (the 0-based list position in
a ``.json`` shard, the 1-based line number in a ``.jsonl`` file): malformed JSON, a record that
is not an object, a missing or empty ``image``, a missing or non-numeric ``gt_score``, the same
image twice within one dataset, and a ``gt_score`` that differs between ``X`` and ``X_caption``
for the same image. An unparsable prediction (null, NaN, ``"N/A"``, a non-numeric string) is not
an error: it becomes NaN and is counted as invalid by the metrics; so is the authors' -1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxbiqa.config import UserError

SCORE_COLUMNS = ("overall_score", "reasoning_score", "caption_score")
COLUMN_LABELS = {"overall_score": "image", "reasoning_score": "caption+think", "caption_score": "caption only"}
CAPTION_SUFFIX = "_caption"
_SHARD = re.compile(r"^p(\d+)\.json$")


class PredictionFormatError(UserError):
    """A prediction file that cannot be read as documented in this module."""


@dataclass(frozen=True)
class ScoreColumn:
    """One score column of one dataset: predictions (NaN = unparsable) against the target."""

    images: tuple[str, ...]
    gt: np.ndarray
    pred: np.ndarray
    source: str  # the folder or files it was read from


@dataclass(frozen=True)
class DatasetPredictions:
    name: str
    columns: dict[str, ScoreColumn]  # keyed by SCORE_COLUMNS entries, in that order
    perception_texts: dict[str, str]  # image -> pass-1 completion, where present
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Row:
    image: str
    gt: float
    scores: dict[str, float]  # only the score keys the record carries
    perception_text: str | None
    where: str  # "file: record i", for error messages


def _parse_number(value: object) -> float | None:
    """A float from a number or numeric string; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _row(record: object, where: str) -> _Row:
    if not isinstance(record, dict):
        raise PredictionFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise PredictionFormatError(f"{where}: missing or empty 'image'")
    if "gt_score" not in record:
        raise PredictionFormatError(f"{where} ({image}): missing 'gt_score'")
    gt = _parse_number(record["gt_score"])
    if gt is None or not math.isfinite(gt):
        raise PredictionFormatError(f"{where} ({image}): 'gt_score' is not a number: {record['gt_score']!r}")
    scores = {}
    for column in SCORE_COLUMNS:
        if column in record:
            value = _parse_number(record[column])
            scores[column] = math.nan if value is None else value
    text = record.get("perception_text")
    return _Row(image, gt, scores, text if isinstance(text, str) else None, where)


def _read_json_shard(path: Path) -> list[_Row]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PredictionFormatError(f"{path}: malformed JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise PredictionFormatError(f"{path}: not UTF-8 text ({err})") from None
    if not isinstance(records, list):
        raise PredictionFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return [_row(record, f"{path}: record {i}") for i, record in enumerate(records)]


def _read_jsonl(path: Path) -> Iterator[tuple[str, _Row]]:
    try:
        yield from _jsonl_rows(path)
    except UnicodeDecodeError as err:
        raise PredictionFormatError(f"{path}: not UTF-8 text ({err})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, _Row]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictionFormatError(f"{where}: malformed JSON: {err}") from err
            row = _row(record, where)
            dataset = record.get("dataset")
            if not isinstance(dataset, str) or not dataset:
                raise PredictionFormatError(f"{where} ({row.image}): missing or empty 'dataset'")
            yield dataset, row


def _shards(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _SHARD.match(p.name))]
    return [p for _, p in sorted(found)]


def _collect(path: Path) -> dict[str, list[tuple[str, _Row]]]:
    """Rows of each source (dataset name as found, possibly ending in _caption) under `path`."""
    groups: dict[str, list[tuple[str, _Row]]] = {}

    def add(dataset: str, source: str, rows: Iterable[_Row]) -> None:
        groups.setdefault(dataset, []).extend((source, row) for row in rows)

    def add_folder(folder: Path) -> None:
        for shard in _shards(folder):
            add(folder.name, str(folder), _read_json_shard(shard))

    def add_jsonl(file: Path) -> None:
        for dataset, row in _read_jsonl(file):
            add(dataset, str(file), [row])

    if path.is_file():
        if path.suffix == ".jsonl":
            add_jsonl(path)
        elif path.suffix == ".json":
            add(path.parent.name, str(path), _read_json_shard(path))
        else:
            raise PredictionFormatError(f"{path}: expected a .json shard or a .jsonl file")
        if not groups:
            raise PredictionFormatError(f"{path}: no prediction records in it (an empty file?)")
    elif path.is_dir():
        if _shards(path):
            add_folder(path)
        else:
            for child in sorted(path.iterdir()):
                if child.is_dir() and _shards(child):
                    add_folder(child)
                elif child.is_file() and child.suffix == ".jsonl":
                    add_jsonl(child)
        if not groups:
            raise PredictionFormatError(f"{path}: no p<N>.json shards, dataset folders or .jsonl files found")
    else:
        raise PredictionFormatError(f"{path}: no such file or directory")
    return groups


def _check_unique(dataset: str, rows: list[tuple[str, _Row]]) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for _, row in rows:
        if row.image in seen:
            clashes.append(f"{row.image} ({seen[row.image]} and {row.where})")
        seen[row.image] = row.where
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; … {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise PredictionFormatError(f"dataset {dataset!r}: duplicate image ids: {shown}")


def _column(rows: list[tuple[str, _Row]], column: str) -> ScoreColumn | None:
    """The column from the rows that carry it; rows of the same source lacking it count as unparsable."""
    sources = {source for source, row in rows if column in row.scores}
    if not sources:
        return None
    kept = [row for source, row in rows if source in sources]
    return ScoreColumn(
        images=tuple(row.image for row in kept),
        gt=np.array([row.gt for row in kept], dtype=np.float64),
        pred=np.array([row.scores.get(column, math.nan) for row in kept], dtype=np.float64),
        source=", ".join(sorted(sources)),
    )


def _check_gt_agrees(name: str, main: list[tuple[str, _Row]], caption: list[tuple[str, _Row]]) -> None:
    gt = {row.image: row for _, row in main}
    for _, row in caption:
        other = gt.get(row.image)
        if other is not None and not math.isclose(other.gt, row.gt, rel_tol=1e-6, abs_tol=1e-9):
            raise PredictionFormatError(
                f"dataset {name!r}, image {row.image}: gt_score {other.gt} at {other.where} "
                f"but {row.gt} at {row.where}"
            )


def _dataset(name: str, main: list[tuple[str, _Row]], caption: list[tuple[str, _Row]]) -> DatasetPredictions:
    _check_unique(name, main)
    _check_unique(name + CAPTION_SUFFIX, caption)
    _check_gt_agrees(name, main, caption)
    columns, notes = {}, []
    for column in SCORE_COLUMNS:
        found = _column(main, column)
        if column == "caption_score":
            from_folder = _column(caption, column)
            if from_folder is not None:
                if found is not None:
                    notes.append(
                        f"caption_score from {from_folder.source} takes precedence"
                        f" over the inline one in {found.source}"
                    )
                found = from_folder
        if found is not None:
            columns[column] = found
    texts = {row.image: row.perception_text for _, row in main if row.perception_text is not None}
    return DatasetPredictions(name, columns, texts, tuple(notes))


def load_predictions(path: str | Path) -> dict[str, DatasetPredictions]:
    """All datasets under `path` (a file, a dataset folder or a model folder), sorted by name."""
    groups = _collect(Path(path))
    names = sorted({d[: -len(CAPTION_SUFFIX)] if d.endswith(CAPTION_SUFFIX) else d for d in groups})
    return {name: _dataset(name, groups.get(name, []), groups.get(name + CAPTION_SUFFIX, [])) for name in names}


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats turned into None (JSON has no NaN), through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
