"""Records -> a TFDS ArrayRecord dataset (tensorflow-datasets' builder, no TensorFlow needed), and
random access to it again (`tfds.builder_from_directory(...).as_data_source`), ready for grain.

Layout: `OUT/jaxbiqa_iqa/<name>/1.0.0/` with one ArrayRecord file set per split. Each example
holds every record field (records.FIELDS): `image` is the original file's encoded bytes, as read
(no re-encoding, so JPEG artifacts are exactly the dataset's), strings are TFDS Text, numbers
float32 (TFDS stores floats as float32; NaN stays NaN). `build_tfds` checks that every image
decodes (`verify_images`) and applies the bad-record policy: a missing or corrupt image raises,
naming the record, or is skipped and listed in the returned SkipReport. TFDS stores examples in
an order of its own (hashed keys), not the order given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxbiqa.config import UserError
from jaxbiqa.data.access import Concat, RecordList
from jaxbiqa.data.images import decode_image, read_image_bytes
from jaxbiqa.data.records import FLOAT_FIELDS, STRING_FIELDS, OnBad, RecordGuard, SkipReport

VERSION = "1.0.0"


class Built(NamedTuple):
    path: Path                             # the dataset's version folder
    report: SkipReport                     # records skipped for a missing or corrupt image
    written: list[Mapping[str, Any]]       # the records written


class JaxbiqaIqa(tfds.core.GeneratorBasedBuilder):
    """One jaxbiqa dataset: the config name is the dataset name, the splits are the records' splits."""

    VERSION = tfds.core.Version(VERSION)
    # No download checksums to look up. TFDS 4.9.10 would otherwise locate this module's folder
    # through `importlib_resources`, a package it only requires on Python < 3.9.
    code_path = None

    def __init__(self, *, records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 guard: RecordGuard | None = None, verify_images: bool = True, **kwargs: Any):
        self._records = records or {}
        self._guard = guard or RecordGuard()
        self._verify = verify_images
        self.written: list[Mapping[str, Any]] = []  # the records written, in the order given
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Tensor(shape=(), dtype=np.object_)}
        features.update({name: tfds.features.Text() for name in STRING_FIELDS})
        features.update({name: tfds.features.Scalar(dtype=np.float32) for name in FLOAT_FIELDS})
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     description="IQA records in jaxbiqa's schema (jaxbiqa.data.records)")

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        return {split: self._generate_examples(split) for split in self._records}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for record in self._records[split]:
            where = f"record {record['dataset']}/{record['id']}"
            example = None
            with self._guard(where):
                data = read_image_bytes(record["image"], where)
                if self._verify:
                    decode_image(data, where)
                example = {"image": data, **{k: record[k] for k in STRING_FIELDS},
                           **{k: np.float32(record[k]) for k in FLOAT_FIELDS}}
            if example is not None:
                self.written.append(record)
                yield f"{record['dataset']}/{record['id']}", example


def build_tfds(records: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, name: str, *,
               on_bad: OnBad = "raise", verify_images: bool = True) -> Built:
    """Writes `records` (grouped by their `split`) as dataset `name` under `out_dir`; returns the
    dataset's version folder, the report of skipped records and the records written."""
    if not records:
        raise UserError("no records to build")
    if not name.replace("_", "").isalnum() or not name[0].isalpha() or name.lower() != name:
        raise UserError(f"dataset name {name!r} must be lower-case letters, digits and underscores")
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_split.setdefault(record["split"], []).append(record)
    guard = RecordGuard(on_bad)
    builder = JaxbiqaIqa(records=by_split, guard=guard, verify_images=verify_images, data_dir=str(out_dir),
                         config=tfds.core.BuilderConfig(name=name))
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return Built(Path(builder.data_dir), guard.report, builder.written)


def dataset_dirs(path: str | os.PathLike) -> list[Path]:
    """The built dataset folders (each with dataset_info.json) at or below `path`."""
    path = Path(path)
    if (path / "dataset_info.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.glob("**/dataset_info.json"))
    if not found:
        raise FileNotFoundError(f"no TFDS dataset (dataset_info.json) at or below {path}")
    return found


def _from_tfds(raw: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"image": raw["image"]}
    for name in STRING_FIELDS:
        value = raw[name]
        record[name] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    for name in FLOAT_FIELDS:
        record[name] = float(raw[name])
    return record


class TfdsRecords(Concat):
    """Random access to built datasets (all below `path`) as records: strings decoded, floats as
    Python floats, `image` the encoded bytes. `split=None` takes every split."""

    @staticmethod
    def splits(path: str | os.PathLike) -> dict[str, int]:
        """Records per split of the datasets below `path`."""
        counts: dict[str, int] = {}
        for folder in dataset_dirs(path):
            for name, info in tfds.builder_from_directory(str(folder)).info.splits.items():
                counts[name] = counts.get(name, 0) + info.num_examples
        return counts

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        sources = []
        for folder in dataset_dirs(path):
            builder = tfds.builder_from_directory(str(folder))
            splits = [split] if split else list(builder.info.splits)
            sources += [RecordList(builder.as_data_source(split=s), _from_tfds)
                        for s in splits if s in builder.info.splits]
        super().__init__(sources)
