"""LIVE In the Wild Image Quality Challenge: `Data/AllImages_release.mat` (cell array
`AllImages_release` of file names) and `Data/AllMOS_release.mat` (`AllMOS_release`, MOS on about
0-100, normalised with its min/max 3.42 and 92.43) with the images in `Images/`; the seven
training images t1.bmp ... t7.bmp are in `Images/trainingImages/`. All 1,169 records get
`split` (default "test"). Reads .mat files with scipy.io.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxbiqa.data.records import BadRecordError, OnBad, RecordGuard, SkipReport, image_path, parse_float, resolve_root
from jaxbiqa.data.sources.common import LabelFileError, Row, ScaleArg, find_file, finish, resolve_scale


def _mat_variable(path: Path, name: str) -> np.ndarray:
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises ValueError/TypeError/MatReadError for broken files
        raise LabelFileError(f"{path}: not a readable .mat file ({type(err).__name__}: {err})") from None
    if name not in data:
        held = sorted(k for k in data if not k.startswith("__"))
        raise LabelFileError(f"{path}: no variable {name!r}; it holds {held}")
    return np.asarray(data[name]).reshape(-1)


def _cell_text(cell: object) -> str:
    while isinstance(cell, np.ndarray):
        if cell.size != 1:
            raise ValueError(f"expected one name per cell, got {cell.size}")
        cell = cell.reshape(-1)[0]
    return str(cell).strip()


def read_live_challenge(root: str | os.PathLike, *, images_file: str | None = None, mos_file: str | None = None,
                        image_dir: str = "Images", split: str | None = None,
                        split_file: str | os.PathLike | None = None, scale: ScaleArg = "table",
                        on_bad: OnBad = "raise", report: SkipReport | None = None) -> list[dict]:
    root = resolve_root(root)
    guard = RecordGuard(on_bad, report)
    names_path = find_file(root, [images_file] if images_file else ["Data/AllImages_release.mat",
                                                                     "AllImages_release.mat"],
                           "LIVE Challenge AllImages_release.mat")
    mos_path = find_file(root, [mos_file] if mos_file else ["Data/AllMOS_release.mat", "AllMOS_release.mat"],
                         "LIVE Challenge AllMOS_release.mat")
    names = _mat_variable(names_path, "AllImages_release")
    scores = _mat_variable(mos_path, "AllMOS_release")
    if len(names) != len(scores):
        raise LabelFileError(f"{names_path.name} lists {len(names)} images "
                             f"but {mos_path.name} has {len(scores)} scores")
    training = root / image_dir / "trainingImages"
    rows = []
    for index, (cell, score) in enumerate(zip(names, scores)):
        where = f"{names_path.name} entry {index + 1}"
        with guard(where):
            try:
                name = _cell_text(cell)
            except ValueError as err:
                raise BadRecordError(where, str(err)) from None
            folder = os.path.join(image_dir, "trainingImages") if (training / name).is_file() else image_dir
            rows.append(Row(where, {"id": name, "image": image_path(root, os.path.join(folder, name), where),
                                    "mos": parse_float(score, f"{mos_path.name} entry {index + 1}")}))
    return finish(rows, dataset="live_challenge", source=names_path.name, guard=guard,
                  scale=resolve_scale(scale, "live_challenge", rows), split=split, split_file=split_file)
