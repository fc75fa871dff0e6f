"""KonIQ-10k: `koniq10k_scores_and_distributions.csv`
(`image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore`) with the images in `512x384/` or
`1024x768/`.

The score is the `MOS_zscore` column (0-100, the method's target, normalised with 3.91176 and
88.38889); `score_column="MOS"` picks the 1-5 crowd mean instead. The official split comes from
`koniq10k_distributions_sets.csv` (its `set` column: training / validation / test) when that file
is under the root: training -> train, validation -> `val_split` (default "test", giving the
7,058 / 3,015 split of the method), test -> test. Without it every record gets `split` (default
"all"), unless a split file is given.
"""

from __future__ import annotations

import os

from jaxbiqa.data.records import OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root
from jaxbiqa.data.sources.common import (
    Row, ScaleArg, find_file, finish, load_split_file, read_csv, resolve_scale, row_cells,
)

LABEL_FILES = ("koniq10k_scores_and_distributions.csv",
               "koniq10k_scores_and_distributions/koniq10k_scores_and_distributions.csv")
SETS_FILE = "koniq10k_distributions_sets.csv"


def read_koniq(root: str | os.PathLike, *, label_file: str | None = None, image_dir: str = "512x384",
               score_column: str = "MOS_zscore", val_split: str = "test", split: str | None = None,
               split_file: str | os.PathLike | None = None, scale: ScaleArg = "table", on_bad: OnBad = "raise",
               report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    labels = find_file(root, [label_file] if label_file else LABEL_FILES, "KonIQ-10k label file")
    rows = []
    for where, row in read_csv(labels, ["image_name", score_column]):
        with guard(where):
            cells = row_cells(row, where)
            name = cells["image_name"].strip()
            rows.append(Row(where, {
                "id": name,
                "image": image_path(root, os.path.join(image_dir, name), where),
                "mos": parse_float(cells[score_column], f"{where} column {score_column}"),
            }))
    split_of = None
    if split_file is None and split is None and (root / SETS_FILE).is_file():
        official = load_split_file(root / SETS_FILE)
        split_of = {name: val_split if s == "val" else s for name, s in official.items()}
    key = "koniq_mos" if score_column == "MOS" else "koniq"
    return finish(rows, dataset="koniq", source=labels.name, guard=guard, scale=resolve_scale(scale, key, rows),
                  split=split, split_file=split_file, split_of=split_of, default_split="all")
