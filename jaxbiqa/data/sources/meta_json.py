"""DeQA-Score / Q-Insight meta files: a JSON list (or JSON lines) of rows with `image` (or a
one-element `images` list), and

* for scoring: `gt_score` (the dataset's MOS) and usually `gt_score_norm` (1-5, used as given),
  `std`, `id`, `conversations`;
* for Q-Insight's degradation task: `distortion_class` and `severity`.

`dataset` names the dataset (its MOS scale normalises `gt_score` when `gt_score_norm` is absent;
`scale="data"` uses the data's min/max). The id is the image's base name. A first human/gpt
turn pair, if present, fills `question` / `reference`.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxbiqa.data.records import BadRecordError, OnBad, RecordGuard, SkipReport, image_path, parse_float
from jaxbiqa.data.sources.common import Row, ScaleArg, existing_file, finish, load_json_rows, resolve_scale
from jaxbiqa.data.sources.conversations import image_name, turn_pairs


def read_meta_json(path: str | os.PathLike, *, dataset: str, image_root: str | os.PathLike | None = None,
                   split: str | None = None, scale: ScaleArg = "table", on_bad: OnBad = "raise",
                   report: SkipReport | None = None) -> list[dict]:
    path = existing_file(path, "meta file")
    root = Path(image_root) if image_root is not None else path.parent
    guard = RecordGuard(on_bad, report)
    rows = []
    for where, item in load_json_rows(path):
        with guard(where):
            if isinstance(item, BadRecordError):
                raise item
            image = image_name(item, where)
            fields = {"id": os.path.basename(image), "image": image_path(root, image, where)}
            if "gt_score" in item:
                fields["mos"] = parse_float(item["gt_score"], f"{where} field gt_score")
                if "gt_score_norm" in item:
                    fields["mos_norm"] = parse_float(item["gt_score_norm"], f"{where} field gt_score_norm")
            elif "distortion_class" not in item:
                raise BadRecordError(where, "missing score: a row needs gt_score "
                                            "(or distortion_class for degradation data)")
            if "distortion_class" in item:
                fields["distortion"] = str(item["distortion_class"]).strip().lower()
                fields["severity"] = str(item.get("severity") or "").strip().lower()
            if item.get("conversations"):
                pairs = turn_pairs(item["conversations"], where)
                if pairs:
                    fields["question"], fields["reference"] = pairs[0]
            rows.append(Row(where, fields))
    need_scale = any("mos" in r.fields and "mos_norm" not in r.fields for r in rows)
    return finish(rows, dataset=dataset, source=path.name, guard=guard,
                  scale=resolve_scale(scale, dataset, rows) if need_scale else None,
                  split=split, default_split="test" if "test" in path.stem else "train")
