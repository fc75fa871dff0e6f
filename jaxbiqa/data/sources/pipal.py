"""PIPAL (NTIRE 2021/2022 release): `Train_Label/<ref>.txt` files, one `name,elo` line per
distorted image (Elo scores, higher is better, normalised with the public labels' min/max
916.7136 and 1835.9856), with the images in `Train_Dis/` (or split over `Distortion_1..4/`).
Every record gets `split` (default "test").
"""

from __future__ import annotations

import os
import re

from jaxbiqa.data.records import BadRecordError, OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root
from jaxbiqa.data.sources.common import LabelFileError, Row, ScaleArg, finish, resolve_scale


def read_pipal(root: str | os.PathLike, *, label_dir: str = "Train_Label", image_dir: str | None = None,
               split: str | None = None, split_file: str | os.PathLike | None = None, scale: ScaleArg = "table",
               on_bad: OnBad = "raise", report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    labels = sorted((root / label_dir).glob("*.txt"))
    if not labels:
        raise LabelFileError(f"PIPAL label files not found: no {label_dir}/*.txt under {root}")
    if image_dir is not None:
        folders = [image_dir]
    else:
        folders = ["Train_Dis"] + sorted(p.name for p in root.glob("Distortion_*") if p.is_dir())
    located = {name: folder for folder in reversed(folders) if (root / folder).is_dir()
               for name in os.listdir(root / folder)}
    rows = []
    for label in labels:
        for number, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_dir}/{label.name} line {number}"
            with guard(where):
                parts = [p.strip() for p in re.split(r"[,\s]+", line.strip()) if p.strip()]
                if len(parts) != 2:
                    raise BadRecordError(where, f"malformed row: expected 'name,elo', got {line.strip()!r}")
                name = parts[0]
                folder = located.get(name, folders[0])
                rows.append(Row(where, {"id": name, "image": image_path(root, os.path.join(folder, name), where),
                                        "mos": parse_float(parts[1], f"{where} elo")}))
    return finish(rows, dataset="pipal", source=label_dir, guard=guard, scale=resolve_scale(scale, "pipal", rows),
                  split=split, split_file=split_file)
