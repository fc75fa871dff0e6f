"""Q-Reasoning annotations (the method's human perception texts), in all their released forms:

* `human_test.json`: a list of rows whose text fields are `{"answer": "<English>"}`;
* `cot_reasoning_test.json`, `koniq_cot_constrain.json`: text fields are
  `<summarize>JP</summarize> <translation>EN</translation>`; the English part is kept;
* `mixed_cot.json`: the KonIQ-10k training list; annotated rows as above plus `ori_score` (the
  KonIQ MOS) and `normalized_score` (1-5), the others `" "` texts with the MOS in `quality`;
* `filted_data_human_eng.json`: `[{name: {field: [one text per annotator], ...}}]`; the
  annotators' texts are joined with newlines.

Text fields: description, good_aspect, bad_aspect, instruction; numbers: good_impact, bad_impact,
edit_quality, quality (the human overall rating, never the target). Rows that carry a KonIQ
score become `dataset="koniq"` records with `mos` = that score and `mos_norm` =
`normalized_score` (or the KonIQ table); the others are `dataset="qreasoning"` with NaN MOS
(`attach_targets` copies the MOS from another reader's records by image name). Images are given
by bare file name and are looked up under `image_root`. The split defaults to "test" for files
whose name contains "test", else "train".
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxbiqa.data.records import (
    NUMBER_FIELDS, TEXT_FIELDS, BadRecordError, OnBad, RecordGuard, SkipReport, image_path, log, optional_float,
    parse_float,
)
from jaxbiqa.data.sources.common import LabelFileError, Row, ScaleArg, existing_file, finish, load_json, resolve_scale

TRANSLATION = re.compile(r"<translation>(.*?)</translation>", re.DOTALL)
TAGGED = re.compile(r"<summarize>|<translation>")


def english_text(value: Any, where: str) -> str:
    """The English text of one field value, "" when absent."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        if "answer" not in value:
            raise BadRecordError(where, f"a text object needs an 'answer' key, got {sorted(value)}")
        return english_text(value["answer"], where)
    if isinstance(value, list):
        return "\n".join(t for t in (english_text(v, where) for v in value) if t)
    if not isinstance(value, str):
        raise BadRecordError(where, f"a text field must be a string, object or list, got {type(value).__name__}")
    match = TRANSLATION.search(value)
    if match:
        return match[1].strip()
    return "" if TAGGED.search(value) else value.strip()


def _row_fields(item: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": name}
    for field in TEXT_FIELDS:
        fields[field] = english_text(item.get(field), f"{where} field {field}")
    for field in NUMBER_FIELDS:
        fields[field] = optional_float(item.get(field), f"{where} field {field}")
    has_score = "ori_score" in item or "normalized_score" in item
    if has_score:
        if "ori_score" in item:
            fields["mos"] = parse_float(item["ori_score"], f"{where} field ori_score")
        else:  # rows without human text keep the KonIQ MOS in `quality`
            fields["mos"] = parse_float(item.get("quality"), f"{where} field quality")
            fields["quality"] = math.nan
        if "normalized_score" in item:
            fields["mos_norm"] = parse_float(item["normalized_score"], f"{where} field normalized_score")
    return fields


def read_qreasoning(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                    split: str | None = None, scale: ScaleArg = "table", on_bad: OnBad = "raise",
                    report: SkipReport | None = None) -> list[dict]:
    path = existing_file(path, "Q-Reasoning file")
    root = Path(image_root) if image_root is not None else path.parent
    guard = RecordGuard(on_bad, report)
    data = load_json(path)
    if not isinstance(data, list):
        raise LabelFileError(f"{path}: expected a JSON list, got {type(data).__name__}")
    scored: list[Row] = []
    unscored: list[Row] = []
    for index, item in enumerate(data):
        where = f"{path.name} item {index}"
        with guard(where):
            if not isinstance(item, Mapping):
                raise BadRecordError(where, f"expected an object, got {type(item).__name__}")
            if "image" not in item and len(item) == 1 and isinstance(next(iter(item.values())), Mapping):
                name, item = next(iter(item.items()))  # the per-annotator form {name: {...}}
            else:
                name = item.get("image")
            if not isinstance(name, str) or not name.strip():
                raise BadRecordError(where, "missing image name")
            fields = _row_fields(item, name.strip(), where)
            fields["image"] = image_path(root, name.strip(), where)
            (scored if "mos" in fields else unscored).append(Row(where, fields))
    split = split or ("test" if "test" in path.stem else "train")
    records = []
    if scored:
        records += finish(scored, dataset="koniq", source=path.name, guard=guard,
                          scale=resolve_scale(scale, "koniq", scored), split=split)
    if unscored:
        records += finish(unscored, dataset="qreasoning", source=path.name, guard=guard, scale=None, split=split)
    return records


def attach_targets(records: Iterable[dict], targets: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Copies `mos` and `mos_norm` from `targets` (e.g. KonIQ and SPAQ records) into the records
    without a MOS, matching image file names; the others are returned unchanged."""
    by_name = {os.path.basename(t["id"]): t for t in targets}
    out, matched, missing = [], 0, 0
    for record in records:
        target = by_name.get(os.path.basename(record["id"]))
        if math.isnan(record["mos"]) and target is not None:
            record = {**record, "mos": target["mos"], "mos_norm": target["mos_norm"]}
            matched += 1
        elif math.isnan(record["mos"]):
            missing += 1
        out.append(record)
    log.info("attach_targets: %d record(s) got a MOS, %d still have none", matched, missing)
    return out
