"""The generic JSON-lines form (also what `jaxbiqa data synth` writes): one object per line with
the record schema's field names (records.FIELDS). Required: `image` (a path relative to the
file's folder or `image_root`); `id` defaults to the image's base name, `dataset` to the
`dataset` argument, `split` to the `split` argument (else "all"). `mos_norm` is used as given (on
1-5: outside it the record is bad); without it a `mos` is normalised with the dataset's scale from
the table, or with the data's min/max for a dataset the table does not know (with a warning that
names that range) or with `scale="data"`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from jaxbiqa.data.records import (
    FIELDS, FLOAT_FIELDS, MOS_SCALES, OPTIONAL_STRING_FIELDS, BadRecordError, OnBad, RecordGuard, SkipReport,
    image_path, log, optional_float,
)
from jaxbiqa.data.sources.common import Row, ScaleArg, existing_file, finish, load_json_rows, resolve_scale


def read_jsonl(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None, dataset: str = "custom",
               split: str | None = None, scale: ScaleArg = "table", on_bad: OnBad = "raise",
               report: SkipReport | None = None) -> list[dict]:
    path = existing_file(path, "JSON-lines file")
    root = Path(image_root) if image_root is not None else path.parent
    guard = RecordGuard(on_bad, report)
    groups: dict[str, list[Row]] = {}
    splits: dict[str, str] = {}
    for where, item in load_json_rows(path):
        with guard(where):
            if isinstance(item, BadRecordError):
                raise item
            unknown = sorted(set(item) - set(FIELDS))
            if unknown:
                raise BadRecordError(where, f"unknown field(s) {unknown}; the schema is {list(FIELDS)}")
            image = item.get("image")
            if not isinstance(image, str):
                raise BadRecordError(where, "missing `image` path")
            fields = {k: item[k] for k in OPTIONAL_STRING_FIELDS if k in item}
            fields["id"] = str(item.get("id") or os.path.basename(image))
            fields["image"] = image_path(root, image, where)
            for name in FLOAT_FIELDS:
                value = optional_float(item.get(name), f"{where} field {name}")
                if not math.isnan(value):
                    fields[name] = value
            groups.setdefault(str(item.get("dataset") or dataset), []).append(Row(where, fields))
            if item.get("split"):
                splits[fields["id"]] = str(item["split"])
    records = []
    for name, rows in groups.items():
        scale_for = None
        if any("mos" in r.fields and "mos_norm" not in r.fields for r in rows):
            scale_for = resolve_scale("data" if scale == "table" and name not in MOS_SCALES else scale, name, rows)
            if scale == "table" and name not in MOS_SCALES:
                log.warning("%s: dataset %r has no MOS scale in the table: its MOS is normalised by the data's "
                            "min/max [%g, %g]; give `mos_norm`, or choose the scale", path, name, scale_for.low,
                            scale_for.high)
        records += finish(rows, dataset=name, source=path.name, guard=guard, scale=scale_for, split=split,
                          split_of=splits, default_split="all")
    return records
