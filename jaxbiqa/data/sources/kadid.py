"""KADID-10k: `dmos.csv` (`dist_img,ref_img,dmos,var`; despite the name a MOS on 1-5, higher is
better, normalised with its min/max 1.0 and 4.93) with the images in `images/`.

File names `Ixx_TT_LL.png` give the distortion type TT (1-25) and level LL (1-5): `distortion`
holds the type's coarse class (Q-Insight's noise / compression / blur / darken where it applies)
and `severity` the level (slight ... catastrophic). Every record gets `split` (default "test").
"""

from __future__ import annotations

import os
import re

from jaxbiqa.data.records import SEVERITIES, OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root
from jaxbiqa.data.sources.common import Row, ScaleArg, find_file, finish, read_csv, resolve_scale, row_cells

# KADID-10k's 25 distortion types, in order, by coarse class
TYPE_CLASSES: tuple[str, ...] = (
    "blur", "blur", "blur",                                   # gaussian, lens, motion blur
    "color", "color", "color", "color", "color",              # diffusion, shift, quantisation, 2 x saturation
    "compression", "compression",                             # JPEG2000, JPEG
    "noise", "noise", "noise", "noise", "noise",              # white, white in YCbCr, impulse, multiplicative, denoise
    "brighten", "darken", "exposure",                         # brighten, darken, mean shift
    "spatial", "spatial", "spatial", "spatial", "spatial",    # jitter, non-eccentricity patch, pixelate,
                                                              # quantisation, colour block
    "sharpness", "contrast",                                  # high sharpen, contrast change
)
NAME = re.compile(r"^I\d+_(\d+)_(\d+)\.\w+$")


def read_kadid(root: str | os.PathLike, *, label_file: str | None = None, image_dir: str = "images",
               split: str | None = None, split_file: str | os.PathLike | None = None, scale: ScaleArg = "table",
               on_bad: OnBad = "raise", report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    labels = find_file(root, [label_file] if label_file else ["dmos.csv", "kadid10k/dmos.csv"], "KADID-10k dmos.csv")
    rows = []
    for where, row in read_csv(labels, ["dist_img", "dmos"]):
        with guard(where):
            cells = row_cells(row, where)
            name = cells["dist_img"].strip()
            fields = {"id": name, "image": image_path(root, os.path.join(image_dir, name), where),
                      "mos": parse_float(cells["dmos"], f"{where} column dmos")}
            match = NAME.match(name)
            if match and 1 <= int(match[1]) <= len(TYPE_CLASSES) and 1 <= int(match[2]) <= len(SEVERITIES):
                fields["distortion"] = TYPE_CLASSES[int(match[1]) - 1]
                fields["severity"] = SEVERITIES[int(match[2]) - 1]
            rows.append(Row(where, fields))
    return finish(rows, dataset="kadid", source=labels.name, guard=guard, scale=resolve_scale(scale, "kadid", rows),
                  split=split, split_file=split_file)
