"""CSIQ: DMOS in [0, 1], LOWER IS BETTER (mos_norm flips it: 5 = best). Two label forms:

* the official `csiq.DMOS.xlsx`: a sheet (default the active one; the release names it
  `all_by_image`) with the columns `image, dst_idx, dst_type, dst_lev, dmos_std, dmos`, where
  `image` is the reference name (e.g. 1600), `dst_type` one of noise / jpeg / jpeg 2000 / f noise /
  blur / contrast and `dst_lev` the level;
* a plain label list (`csiq_label.txt` and the like): one `name dmos` pair per line, separated by
  white space or a comma, names like `1600.AWGN.1.png`.

Images are `dst_imgs/<TYPE>/<ref>.<TYPE>.<level>.png` with TYPE in AWGN, JPEG, jpeg2000, fnoise,
BLUR, contrast. `distortion` is the coarse class (noise / compression / blur / contrast) and
`severity` the level. Every record gets `split` (default "test").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jaxbiqa.data.records import (
    SEVERITIES, BadRecordError, OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root,
)
from jaxbiqa.data.sources.common import LabelFileError, Row, ScaleArg, find_file, finish, read_xlsx, resolve_scale

# dst_type in the official sheet -> folder / file-name tag
TYPE_TAGS = {"noise": "AWGN", "awgn": "AWGN", "jpeg": "JPEG", "jpeg 2000": "jpeg2000", "jpeg2000": "jpeg2000",
             "f noise": "fnoise", "fnoise": "fnoise", "blur": "BLUR", "contrast": "contrast"}
TAG_CLASSES = {"AWGN": "noise", "JPEG": "compression", "jpeg2000": "compression", "fnoise": "noise",
               "BLUR": "blur", "contrast": "contrast"}
NAME = re.compile(r"^(?P<ref>.+)\.(?P<tag>[A-Za-z0-9]+)\.(?P<level>\d+)\.\w+$")
LABEL_FILES = ("csiq.DMOS.xlsx", "csiq_label.txt", "csiq.txt")


def _fields(root: Path, image_dir: str, name: str, dmos: float, where: str) -> dict:
    match = NAME.match(name)
    if not match:
        raise BadRecordError(where, f"image name {name!r} is not <ref>.<TYPE>.<level>.<ext>")
    tag = TYPE_TAGS.get(match["tag"].lower(), match["tag"])
    fields = {"id": name, "image": image_path(root, os.path.join(image_dir, tag, name), where), "mos": dmos}
    if tag in TAG_CLASSES:
        fields["distortion"] = TAG_CLASSES[tag]
    level = int(match["level"])
    if 1 <= level <= len(SEVERITIES):
        fields["severity"] = SEVERITIES[level - 1]
    return fields


def _xlsx_rows(path: Path, root: Path, image_dir: str, sheet: str | None, guard: RecordGuard) -> list[Row]:
    rows = []
    for where, row in read_xlsx(path, ["image", "dst_type", "dst_lev", "dmos"], sheet=sheet):
        with guard(where):
            reference = str(row.get("image") or "").strip()
            if reference.endswith(".0"):  # a numeric reference name such as 1600 read back as a float
                reference = reference[:-2]
            kind = str(row.get("dst_type") or "").strip().lower()
            if kind not in TYPE_TAGS:
                raise BadRecordError(where, f"unknown dst_type {row.get('dst_type')!r}; known: {sorted(TYPE_TAGS)}")
            level = int(parse_float(row.get("dst_lev"), f"{where} column dst_lev"))
            name = f"{reference}.{TYPE_TAGS[kind]}.{level}.png"
            dmos = parse_float(row.get("dmos"), f"{where} column dmos")
            rows.append(Row(where, _fields(root, image_dir, name, dmos, where)))
    return rows


def _text_rows(path: Path, root: Path, image_dir: str, guard: RecordGuard) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        with guard(where):
            parts = [p for p in re.split(r"[\s,]+", line.strip()) if p]
            if len(parts) != 2:
                raise BadRecordError(where, f"malformed row: expected 'name dmos', got {line.strip()!r}")
            rows.append(Row(where, _fields(root, image_dir, parts[0], parse_float(parts[1], f"{where} dmos"), where)))
    return rows


def read_csiq(root: str | os.PathLike, *, label_file: str | None = None, image_dir: str = "dst_imgs",
              sheet: str | None = None, split: str | None = None, split_file: str | os.PathLike | None = None,
              scale: ScaleArg = "table", on_bad: OnBad = "raise", report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    labels = find_file(root, [label_file] if label_file else LABEL_FILES, "CSIQ label file")
    if labels.suffix == ".xlsx":
        rows = _xlsx_rows(labels, root, image_dir, sheet, guard)
    elif labels.suffix in (".txt", ".csv"):
        rows = _text_rows(labels, root, image_dir, guard)
    else:
        raise LabelFileError(f"{labels}: unknown CSIQ label form (expected .xlsx, or a .txt/.csv of 'name dmos' lines)")
    return finish(rows, dataset="csiq", source=labels.name, guard=guard, scale=resolve_scale(scale, "csiq", rows),
                  split=split, split_file=split_file)
