"""The grain input pipeline: records -> shard -> shuffle -> decode + resize (+ Qwen image
processor and pass-1 prompt tokens) -> skip bad records -> batches.

Order of operations and why:
1. sources: reader records and/or TFDS ArrayRecord datasets, concatenated, filtered to one split;
2. shuffle (seed) and repeat (`num_epochs`, each epoch reshuffled) over ALL records: grain's
   index-based MapDataset, so an iterator's state is a few integers and restores exactly;
3. shard (`ProcessRows`): the stream is cut into global batches of `shard_count x batch_size`
   records and shard `shard_index` (the JAX process by default) keeps its contiguous
   `batch_size` slice of each. So shard i's k-th batch is rows [i*b, (i+1)*b) of global batch k,
   the same records in the same order whatever the number of shards: P processes with batch
   size b read what one process with batch size P*b reads. With `drop_remainder` only whole
   global batches are read, so every process takes the same number of steps;
4. `PrepareExample` (in worker processes when `num_workers > 0`): reads and decodes the image
   (images.decode_image: any mode, EXIF rotation), resizes it to the one fixed size of
   `images.target_size` (so every image is the same number of visual tokens), and, given a
   `preprocess` callable (`Pass1Preprocess`: the Qwen image processor and pass-1 prompt tokens),
   adds its arrays. A bad record becomes a marker under on_bad_record="skip" and an error naming
   the record under "raise";
5. `SkipBadRecords` (main process): drops the markers, counts them per epoch, and at the end of
   each epoch logs the SkipReport and passes it to `on_epoch_end`; its state (epoch and the
   skipped records so far) is part of the iterator state, so a resumed run reports them too. A
   skipped record is replaced by the shard's next one, so with several shards the global batches
   no longer match a one-shard run's from there on;
6. batching: strings become numpy string arrays, numbers float32, arrays are stacked.

`iterator.get_state()` / `set_state()` (or orbax with grain.checkpoint.CheckpointSave) save and
restore the position exactly. Worker processes need the transforms in importable modules (they
are here) and, with grain 0.2.18 and jax installed, absl flags marked as parsed before they start
(`_mark_flags_parsed`), else grain fails with UnparsedFlagAccessError.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxbiqa.data.access import Concat, RecordList
from jaxbiqa.data.images import decode_image, read_image_bytes, resize_image, target_size
from jaxbiqa.data.options import DataSection
from jaxbiqa.data.records import FIELDS, FLOAT_FIELDS, BadRecordError, OnBad, SkipReport, log

Preprocess = Callable[[np.ndarray], Mapping[str, np.ndarray]]
EpochCallback = Callable[[int, SkipReport], None]


# ---------------------------------------------------------------- sources

def open_sources(specs: Sequence[str], split: str, data: DataSection, report: SkipReport | None = None) -> Any:
    """One random-access source for dataset specs (see options.py), filtered to `split` ("" = all)."""
    from jaxbiqa.data.sources import read_source
    from jaxbiqa.data.tfds_builder import TfdsRecords

    parts = []
    found: Counter[str] = Counter()
    for spec in specs:
        kind, sep, path = spec.partition(":")
        if not sep or not path:
            raise ValueError(f"dataset spec {spec!r} must look like KIND:PATH (e.g. koniq:/data/koniq10k)")
        if kind == "tfds":
            parts.append(TfdsRecords(path, split or None))
            found.update(TfdsRecords.splits(path))
            continue
        options: dict[str, Any] = {"on_bad": data.on_bad_record, "report": report}
        if kind == "synthetic":
            kind, path = "jsonl", str(ensure_synthetic(path, data))
        if kind in ("koniq", "spaq", "kadid", "live_challenge", "agiqa3k", "csiq", "pipal"):
            options["split_file"] = data.split_file or None
        if kind in ("qreasoning", "meta_json", "conversations", "jsonl") and data.image_root:
            options["image_root"] = data.image_root
        if kind != "conversations":
            options["scale"] = data.mos_scale
        if kind == "meta_json":
            options["dataset"] = os.path.splitext(os.path.basename(path))[0]
        records = read_source(kind, path, **options)
        found.update(r["split"] for r in records)
        parts.append(RecordList([r for r in records if not split or r["split"] == split]))
    source = Concat(parts)
    if not len(source):
        raise ValueError(f"no records with split {split!r} in {list(specs)}; their splits: {dict(found)} "
                         "(a split file assigns splits to datasets without official ones)")
    return source


def ensure_synthetic(folder: str | os.PathLike, data: DataSection) -> str:
    """The index of the synthetic set in `folder`, generated there first (with the `synthetic_*`
    options) when the folder has none: the offline default works out of the box."""
    index = os.path.join(folder, "index.jsonl")
    if not os.path.isfile(index):
        from jaxbiqa.data.synthetic import PHOTO_NAMES, SynthSpec, write_synthetic

        spec = SynthSpec(seed=data.synthetic_seed, photos=PHOTO_NAMES[: data.synthetic_num_photos or None],
                         crops_per_photo=data.synthetic_crops_per_photo, crop_size=data.synthetic_crop_size,
                         types_per_crop=data.synthetic_types_per_crop)
        log.info("no synthetic set in %s: generating it (%s)", folder, spec)
        write_synthetic(folder, spec)
    return index


# ---------------------------------------------------------------- per-example work

@dataclasses.dataclass(frozen=True)
class Skipped:
    """What flows down the pipeline in place of a bad record under on_bad_record="skip"."""

    where: str
    reason: str
    epoch: int


class PrepareExample:
    """Record -> example dict (decoded fixed-size image, record fields, optional model inputs).

    Called by grain's map_with_index: the index in the repeated dataset gives the epoch.
    """

    def __init__(self, size: tuple[int, int], epoch_length: int, *, match_orientation: bool = True,
                 preprocess: Preprocess | None = None, require_mos: bool = True, on_bad: OnBad = "raise"):
        self.size = size
        self.epoch_length = epoch_length
        self.match_orientation = match_orientation
        self.preprocess = preprocess
        self.require_mos = require_mos
        self.on_bad = on_bad

    def __call__(self, index: int, record: Mapping[str, Any]) -> dict[str, Any] | Skipped:
        epoch = index // self.epoch_length
        where = f"record {record.get('dataset', '?')}/{record.get('id', '?')}"
        try:
            if self.require_mos and not math.isfinite(record["mos_norm"]):
                raise BadRecordError(where, "missing MOS: the record has no target score (require_mos is on)")
            pixels = decode_image(read_image_bytes(record["image"], where), where)
            pixels = resize_image(pixels, self.size, self.match_orientation)
            example = {k: record[k] for k in FIELDS if k != "image"}
            if self.preprocess is None:
                example["image"] = pixels
            else:
                example.update(self.preprocess(pixels))
        except BadRecordError as err:
            if self.on_bad == "raise":
                raise
            return Skipped(err.where, err.reason, epoch)
        except Exception as err:  # not a known data problem (never skipped), but say which record
            raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err
        example["_epoch"] = epoch
        return example


class Pass1Preprocess:
    """The Qwen image processor and the pass-1 prompt tokens for one image (jaxbiqa.processing).

    Returns `pixel_values` [patches, C*Tp*P*P] float32, `image_grid_thw` [3], `input_ids` and
    `attention_mask` [T] int32. With one fixed image size every example has the same shapes.
    """

    def __init__(self, processor: Any):
        self.processor = processor
        self._prompts: dict[int, dict[str, np.ndarray]] = {}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        vision = self.processor.images([image])
        _, rows, cols = (int(v) for v in vision["image_grid_thw"][0])
        patch = int(self.processor.image_processor.patch_size)
        if (rows * patch, cols * patch) != image.shape[:2]:
            raise ValueError(f"the image processor resized {image.shape[1]}x{image.shape[0]} to "
                             f"{cols * patch}x{rows * patch}: its min/max pixels must admit the data's fixed size")
        tokens = int(self.processor.num_image_tokens(vision["image_grid_thw"])[0])
        if tokens not in self._prompts:
            encoded = self.processor.encode([self.processor.pass1_text(tokens)])
            self._prompts[tokens] = {k: v[0] for k, v in encoded.items()}
        return {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"][0],
                **self._prompts[tokens]}


# ---------------------------------------------------------------- skipping, with a report per epoch

class _SkipBadRecordsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, label: str, on_epoch_end: EpochCallback | None):
        super().__init__(parent)
        self._label = label
        self._on_epoch_end = on_epoch_end
        self._epoch = 0
        self._report = SkipReport()
        self._finished = False

    def _close_epoch(self) -> None:
        summary = self._report.summary(f"{self._label} epoch {self._epoch}")
        (log.warning if len(self._report) else log.info)("%s", summary)
        if self._on_epoch_end is not None:
            self._on_epoch_end(self._epoch, self._report)
        self._report = SkipReport()

    def __next__(self) -> dict[str, Any]:
        while True:
            try:
                element = next(self._parent)
            except StopIteration:
                if not self._finished:
                    self._finished = True
                    self._close_epoch()
                raise
            epoch = element.epoch if isinstance(element, Skipped) else element["_epoch"]
            while epoch > self._epoch:
                self._close_epoch()
                self._epoch += 1
            if isinstance(element, Skipped):
                self._report.add(element.where, element.reason)
                continue
            return {k: v for k, v in element.items() if k != "_epoch"}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "epoch": self._epoch,
                "skipped": [list(entry) for entry in self._report.entries], "finished": self._finished}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._epoch = int(state["epoch"])
        self._report = SkipReport([tuple(entry) for entry in state["skipped"]])
        self._finished = bool(state["finished"])


class SkipBadRecords(grain.IterDataset):
    """Drops `Skipped` markers; logs and reports them at the end of each epoch."""

    def __init__(self, parent: grain.IterDataset, label: str = "data", on_epoch_end: EpochCallback | None = None):
        super().__init__(parent)
        self._label = label
        self._on_epoch_end = on_epoch_end

    def __iter__(self) -> _SkipBadRecordsIterator:
        return _SkipBadRecordsIterator(self._parent.__iter__(), self._label, self._on_epoch_end)


# ---------------------------------------------------------------- batching and assembly

def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stack a list of examples: arrays stacked, numbers float32, strings a numpy string array."""
    batch = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if isinstance(values[0], np.ndarray):
            batch[key] = np.stack(values)
        elif key in FLOAT_FIELDS or isinstance(values[0], float):
            batch[key] = np.asarray(values, dtype=np.float32)
        else:
            batch[key] = np.asarray(values)
    return batch


def _mark_flags_parsed() -> None:
    # grain 0.2.18 reads absl flags when it starts worker processes once jax is importable;
    # nothing parses them in a program that is not an absl app.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class ProcessRows(grain.MapDataset):
    """Shard `index` of `count`: its contiguous `rows` of each global batch of `count * rows` elements.

    Element j of the shard is element `(j // rows) * count * rows + index * rows + j % rows` of
    `parent`. With `drop_remainder` only whole global batches are kept; otherwise the last, partial
    one is shared out in the same order (a shard may get fewer rows, or none).
    """

    def __init__(self, parent: grain.MapDataset, rows: int, index: int, count: int, *, drop_remainder: bool = True):
        super().__init__(parent)
        if rows < 1 or not 0 <= index < count:
            raise ValueError(f"ProcessRows: need rows >= 1 and 0 <= index < count, got {rows}, {index}, {count}")
        self._rows, self._index, self._count = rows, index, count
        whole, rest = divmod(len(parent), rows * count)
        self._length = whole * rows + (0 if drop_remainder else min(rows, max(rest - index * rows, 0)))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._rows)
        return self._parent[(batch * self._count + self._index) * self._rows + row]

    def __str__(self) -> str:
        return f"ProcessRows(rows={self._rows}, index={self._index}, count={self._count})"


def shard_options(data: DataSection) -> grain.sharding.ShardOptions:
    if data.shard_count > 0 and data.shard_index >= 0:
        return grain.sharding.ShardOptions(data.shard_index, data.shard_count, drop_remainder=data.drop_remainder)
    if data.shard_count > 0 or data.shard_index >= 0:
        raise ValueError(f"set both shard_index and shard_count, or neither "
                         f"(got {data.shard_index}, {data.shard_count})")
    return grain.sharding.ShardByJaxProcess(drop_remainder=data.drop_remainder)


def image_size(data: DataSection) -> tuple[int, int]:
    """The one (height, width) every image is resized to."""
    return target_size(data.max_pixels, data.aspect, data.min_pixels)


def build_dataset(source: Any, data: DataSection, *, preprocess: Preprocess | None = None,
                  on_epoch_end: EpochCallback | None = None, label: str = "data",
                  shard: grain.sharding.ShardOptions | None = None) -> grain.IterDataset:
    """The batched IterDataset over `source` (random access records) with `data`'s options."""
    shard = shard or shard_options(data)
    ds = grain.MapDataset.source(source)
    epoch_length = len(ds)
    if data.shuffle:
        ds = ds.shuffle(seed=data.seed)
    if data.num_epochs != 1:
        ds = ds.repeat(data.num_epochs)
    # prepared lazily: only the records of this shard's rows are decoded
    ds = ds.map_with_index(PrepareExample(image_size(data), epoch_length, match_orientation=data.match_orientation,
                                          preprocess=preprocess, require_mos=data.require_mos,
                                          on_bad=data.on_bad_record))
    ds = ProcessRows(ds, data.batch_size, shard.shard_index, shard.shard_count, drop_remainder=shard.drop_remainder)
    if not len(ds):
        raise ValueError(f"shard {shard.shard_index}/{shard.shard_count} of {len(source)} records is empty "
                         f"(a global batch is {shard.shard_count} x {data.batch_size} records)")
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads,
                                              prefetch_buffer_size=data.prefetch_buffer_size))
    if data.num_workers > 0:
        _mark_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                         per_worker_buffer_size=data.worker_buffer_size))
    it = SkipBadRecords(it, label=label, on_epoch_end=on_epoch_end)
    return it.batch(data.batch_size, drop_remainder=data.drop_remainder, batch_fn=collate)


def make_pipeline(data: DataSection, split: str = "train", *, preprocess: Preprocess | None = None,
                  on_epoch_end: EpochCallback | None = None) -> grain.IterDataset:
    """The training (split="train") or evaluation (split="eval") pipeline from the config: eval
    reads `data.eval` in order, once, keeping the last partial batch and the shards' remainders."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    report = SkipReport()
    specs, wanted = (data.train, data.train_split) if split == "train" else (data.eval, data.eval_split)
    source = open_sources(specs, wanted, data, report)
    if len(report):
        log.warning("%s", report.summary(f"{split} label files"))
    if split == "eval":
        data = dataclasses.replace(data, shuffle=False, num_epochs=1, drop_remainder=False)
    return build_dataset(source, data, preprocess=preprocess, on_epoch_end=on_epoch_end, label=split)
