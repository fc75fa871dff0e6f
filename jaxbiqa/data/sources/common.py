"""What every reader shares: label-file parsing with row numbers, split files, and the step that
turns parsed rows into checked records (scale, unique ids, split assignment)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jaxbiqa.config import UserError
from jaxbiqa.data.records import (
    MOS_SCALES, BadRecordError, MosScale, RecordGuard, check_unique_ids, log, make_record, scale_from_data,
)

ScaleArg = MosScale | Literal["table", "data"]

# spellings of split names found in official split files
SPLIT_ALIASES = {"training": "train", "testing": "test", "validation": "val", "valid": "val"}


class LabelFileError(UserError):
    """A label or split file that cannot be read at all (missing, malformed, wrong columns)."""


@dataclasses.dataclass
class Row:
    """One parsed label row: `where` names its file and line; `fields` feed `make_record`."""

    where: str
    fields: dict[str, Any]


def existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"{what} not found: {path}")
    return path


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of `candidates` (paths relative to root) that exists."""
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise LabelFileError(f"{what} not found under {root} (looked for {', '.join(candidates)})")


def read_csv(path: Path, required: Sequence[str], *,
             delimiter: str | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV file with a header, as ("file line N", {column: cell}) pairs.

    The delimiter is a tab for .tsv files and a comma otherwise, unless given. A missing required
    column is a LabelFileError (the whole file is unusable); a row with the wrong number of cells
    yields a row dict holding the key None, which `row_cells` turns into a BadRecordError.
    """
    if delimiter is None:
        delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle, _utf8(path):
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise LabelFileError(f"{path}: missing column(s) {missing}; the header is {header}")
        reader.fieldnames = header
        try:
            for row in reader:
                yield f"{path.name} line {reader.line_num}", row
        except csv.Error as err:
            raise LabelFileError(f"{path} line {reader.line_num}: malformed CSV ({err})") from None


def row_cells(row: Mapping[str | None, Any], where: str) -> Mapping[str, Any]:
    if None in row or any(v is None for v in row.values()):
        raise BadRecordError(where, f"malformed row: expected {len([k for k in row if k is not None])} cells")
    return row


@contextlib.contextmanager
def _utf8(path: Path) -> Iterator[None]:
    """A file that is not UTF-8 text is a LabelFileError naming it."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise LabelFileError(f"{path}: not UTF-8 text ({err})") from None


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle, _utf8(path):
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise LabelFileError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def load_json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """("file item N" / "file line N", object) for a JSON list or a JSON-lines file; a malformed
    line or an item that is not an object becomes a BadRecordError for it (the others stay usable)."""
    with _utf8(path):
        text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl" or (not text.lstrip().startswith("[") and "\n{" in text.strip()):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                yield where, _object(where, json.loads(line))
            except json.JSONDecodeError as err:
                yield where, BadRecordError(where, f"malformed JSON at column {err.colno}: {err.msg}")
        return
    data = load_json(path)
    if not isinstance(data, list):
        raise LabelFileError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, item in enumerate(data):
        where = f"{path.name} item {index}"
        yield where, _object(where, item)


def _object(where: str, item: Any) -> Any:
    return item if isinstance(item, Mapping) else BadRecordError(where, f"expected an object, got {type(item).__name__}")


def load_split_file(path: str | os.PathLike) -> dict[str, str]:
    """Image name -> split, from a user or official split file.

    Accepted forms: JSON `{"train": [names], "test": [names], ...}` (the DeQA-Score split files),
    JSON `{name: split}`, or a CSV/TSV whose header has a name column (image_name / image / name /
    id / dist_img) and a `split` or `set` column (KonIQ's koniq10k_distributions_sets.csv).
    Names are compared by base name. "training"/"validation"/"testing" read as train/val/test.
    """
    path = existing_file(path, "split file")
    mapping: dict[str, str] = {}
    if path.suffix == ".json":
        data = load_json(path)
        if not isinstance(data, dict):
            raise LabelFileError(f"{path}: a JSON split file must be an object")
        if all(isinstance(v, list) for v in data.values()):
            pairs = [(name, split) for split, names in data.items() for name in names]
        elif all(isinstance(v, str) for v in data.values()):
            pairs = list(data.items())
        else:
            raise LabelFileError(f"{path}: expected {{split: [names]}} or {{name: split}}")
    else:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        header = [h.strip() for h in header]
        name_col = next((c for c in ("image_name", "image", "name", "id", "dist_img") if c in header), None)
        split_col = next((c for c in ("split", "set") if c in header), None)
        if name_col is None or split_col is None:
            raise LabelFileError(f"{path}: a split CSV needs a name column and a split/set column; header is {header}")
        pairs = [(row[name_col], row[split_col]) for _, row in read_csv(path, [name_col, split_col])]
    for name, split in pairs:
        key = os.path.basename(str(name).strip())
        split = str(split).strip().lower()
        mapping[key] = SPLIT_ALIASES.get(split, split)
    if not mapping:
        raise LabelFileError(f"{path}: no entries")
    return mapping


def resolve_scale(scale: ScaleArg, dataset_key: str, rows: Sequence[Row]) -> MosScale | None:
    if isinstance(scale, MosScale):
        return scale
    table = MOS_SCALES.get(dataset_key)
    if scale == "data":
        values = [r.fields.get("mos", math.nan) for r in rows]
        return scale_from_data(values, lower_is_better=table.lower_is_better if table else False)
    if scale == "table":
        if table is None:
            raise UserError(f"no MOS scale in the table for {dataset_key!r}; pass scale='data' or a MosScale")
        return table
    raise ValueError(f"scale must be 'table', 'data' or a MosScale, got {scale!r}")


def finish(rows: Sequence[Row], *, dataset: str, source: str, guard: RecordGuard, scale: MosScale | None,
           split: str | None, split_file: str | os.PathLike | None = None, default_split: str = "test",
           split_of: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Records from parsed rows: normalised MOS, unique ids, and a split for each.

    Split precedence: `split_file` (rows not listed in it are left out, with a log line), then
    `split` (one split for all), then `split_of` (id -> split as the source itself gives it),
    then `default_split`.
    """
    split_map = load_split_file(split_file) if split_file else None
    records, wheres = [], []
    dropped = 0
    for row in rows:
        name = os.path.basename(row.fields["id"])
        if split_map is not None:
            if name not in split_map:
                dropped += 1
                continue
            row_split = split_map[name]
        else:
            row_split = split or (split_of or {}).get(row.fields["id"]) or default_split
        with guard(row.where):
            records.append(make_record(dataset=dataset, split=row_split, scale=scale, **row.fields))
            wheres.append(row.where)
    if dropped:
        log.info("%s: %d record(s) not listed in the split file were left out", source, dropped)
    return check_unique_ids(records, guard, wheres)


def read_xlsx(path: Path, required: Sequence[str], sheet: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of an Excel sheet under the first row that holds all `required` column names (title
    rows above it are passed over), as ("file row N", {column: value}) pairs. Needs openpyxl."""
    try:
        import openpyxl
    except ImportError:
        raise ImportError(f"reading {path.name} needs openpyxl (pip install openpyxl)") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile/XML/KeyError types for broken files
        raise LabelFileError(f"{path}: not a readable .xlsx file ({type(err).__name__}: {err})") from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise LabelFileError(f"{path}: no sheet {sheet!r}; sheets are {book.sheetnames}")
        rows = book[sheet].iter_rows(values_only=True) if sheet else book.active.iter_rows(values_only=True)
        header: list[str] | None = None
        for number, values in enumerate(rows, start=1):
            cells = ["" if v is None else str(v).strip() for v in values]
            if header is None:
                if all(c in cells for c in required):
                    header = cells
                continue
            if not any(cells):
                continue
            yield f"{path.name} row {number}", {h: v for h, v in zip(header, values) if h}
        if header is None:
            raise LabelFileError(f"{path}: no header row with the columns {list(required)}")
    finally:
        book.close()


def pick_dir(root: Path, candidates: Sequence[str]) -> Path:
    """The first existing folder among `candidates` under root; the first candidate if none exists
    (the images then show up as missing files, each named, when the pipeline reads them)."""
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return root / candidates[0]
