"""SPAQ: `Annotations/MOS and Image attribute scores.xlsx` (`Image name, MOS, Brightness,
Colorfulness, Contrast, Noisiness, Sharpness`; MOS on 0-100, normalised with its min/max 2 and 96)
with the images in `TestImage/`. SPAQ has no official split: every record gets `split`
(default "test", its role in the method) unless a split file is given. Needs openpyxl.
"""

from __future__ import annotations

import os

from jaxbiqa.data.records import OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root
from jaxbiqa.data.sources.common import Row, ScaleArg, find_file, finish, read_xlsx, resolve_scale

LABEL_FILES = ("Annotations/MOS and Image attribute scores.xlsx", "MOS and Image attribute scores.xlsx")


def read_spaq(root: str | os.PathLike, *, label_file: str | None = None, image_dir: str = "TestImage",
              split: str | None = None, split_file: str | os.PathLike | None = None, scale: ScaleArg = "table",
              on_bad: OnBad = "raise", report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    labels = find_file(root, [label_file] if label_file else LABEL_FILES, "SPAQ label file")
    rows = []
    for where, row in read_xlsx(labels, ["Image name", "MOS"]):
        with guard(where):
            name = str(row.get("Image name") or "").strip()
            rows.append(Row(where, {
                "id": name,
                "image": image_path(root, os.path.join(image_dir, name), where),
                "mos": parse_float(row.get("MOS"), f"{where} column MOS"),
            }))
    return finish(rows, dataset="spaq", source=labels.name, guard=guard, scale=resolve_scale(scale, "spaq", rows),
                  split=split, split_file=split_file)
