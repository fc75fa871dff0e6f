"""AGIQA-3K: `data.csv` (`name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align`)
with the images in `AGIQA-3K/` (or `images/`, or beside the csv). The score is `mos_quality`
(`score_column="mos_align"` for text-image alignment), normalised on the nominal 0-5 scale, or
with `scale="data"` on the data's min/max. Every record gets `split` (default "test").
"""

from __future__ import annotations

import os

from jaxbiqa.data.records import OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root
from jaxbiqa.data.sources.common import Row, ScaleArg, find_file, finish, pick_dir, read_csv, resolve_scale, row_cells


def read_agiqa3k(root: str | os.PathLike, *, label_file: str | None = None, image_dir: str | None = None,
                 score_column: str = "mos_quality", split: str | None = None,
                 split_file: str | os.PathLike | None = None, scale: ScaleArg = "table", on_bad: OnBad = "raise",
                 report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    labels = find_file(root, [label_file] if label_file else ["data.csv"], "AGIQA-3K data.csv")
    images = root / image_dir if image_dir is not None else pick_dir(root, ["AGIQA-3K", "images", "."])
    rows = []
    for where, row in read_csv(labels, ["name", score_column]):
        with guard(where):
            cells = row_cells(row, where)
            name = cells["name"].strip()
            rows.append(Row(where, {"id": name, "image": image_path(root, os.path.join(images, name), where),
                                    "mos": parse_float(cells[score_column], f"{where} column {score_column}")}))
    return finish(rows, dataset="agiqa3k", source=labels.name, guard=guard, scale=resolve_scale(scale, "agiqa3k", rows),
                  split=split, split_file=split_file)
