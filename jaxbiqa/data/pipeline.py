"""The grain input pipeline: records -> image sizes -> batch plan -> this process's rows ->
decode + resize (+ Qwen image processor and pass-1 prompt tokens) -> batches of one image size.

Images keep their aspect ratio: each is resized as Qwen2.5-VL's processor does (`images.resized_size`:
sides multiples of 28 px, about `min_pixels..max_pixels`). A batch must have one shape, so batches
are planned at the index level by image size ("grid"):
1. sources: reader records and/or TFDS ArrayRecord datasets, concatenated, filtered to one split;
2. sizes (`image_sizes`): every record's image header is read (Pillow's `open` reads no pixels;
   a thread pool of `read_threads`; cached per image file for the life of the process) and turned
   into the size it is resized to. A record whose header cannot be read (or without a MOS when
   `require_mos`) is a bad record: an error naming it, or under on_bad_record="skip" left out of
   every epoch and listed in each epoch's skip report;
3. plan (`BatchPlan`, training): per epoch, the records are shuffled (seed, epoch), grouped by
   image size (stable), each group is cut into global batches of `global_batch_size`, and the
   batch order is shuffled. With `drop_remainder` each size's last, partial batch is left out
   (`BatchPlan.dropped` records per epoch, logged), otherwise kept as a short batch. Evaluation
   (`in_order`) keeps the record order and cuts a batch where the size changes or the batch is
   full, so batches may be short. The plan depends on indices, sizes, the seed and the global
   batch size only: the same on any number of processes;
4. shard (`ProcessRows`): shard i of P (the JAX process by default) takes the contiguous rows
   [i*b, (i+1)*b) of each global batch, b = global_batch_size / P, so P processes read exactly
   the global batches of one process. A short batch may leave a shard fewer rows or none;
5. `PrepareExample` (in worker processes when `num_workers > 0`): reads and decodes the image
   (images.decode_image: any mode, EXIF rotation), resizes it to its planned size with Pillow, and,
   given a `preprocess` callable (`Pass1Preprocess`), adds the model inputs. A record that fails
   here (truncated, corrupt, or decoding to another size than its header said) raises naming it,
   or under "skip" is replaced by the next readable record of the same image size in dataset order
   (cyclically; usually the next row of its own batch), so shapes and batch sizes stay as planned;
   the replaced record goes to the epoch's skip report. Only when no record of that size is
   readable does the run stop;
6. `BatchRows` (main process): collects each batch's rows (numbers float32, strings numpy
   string arrays, arrays stacked), logs the SkipReport at the end of each epoch and passes it to
   `on_epoch_end`; its state is part of the iterator state, so a resumed run reports it too.

Compiles: every image size is a new shape for the model, so the rollout and the update compile
once per (image size, prompt bucket) in use and never again: KonIQ (every image 512x384 ->
504x392) compiles each once, as before; KonIQ + LIVE-C (500x500 -> 448x448) twice; a dataset of
phone photos in portrait and landscape twice per bucket; N distinct sizes, N times.

`iterator.get_state()` / `set_state()` (or orbax with grain.checkpoint.CheckpointSave) save and
restore the position exactly: the state is a few integers (the plan is recomputed from the seed).
Worker processes need the transforms in importable modules (they are here) and, with grain
0.2.18 and jax installed, absl flags marked as parsed before they start (`_mark_flags_parsed`),
else grain fails with UnparsedFlagAccessError.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from jaxbiqa.config import DataSection, UserError
from jaxbiqa.data.access import Concat, RecordList
from jaxbiqa.data.images import (
    check_pixels, decode_image, read_image_bytes, read_image_size, resize_image, resized_size)
from jaxbiqa.data.records import FIELDS, FLOAT_FIELDS, BadRecordError, SkipReport, log

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
            raise UserError(f"dataset spec {spec!r} must look like KIND:PATH (e.g. koniq:/data/koniq10k)")
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
        raise UserError(f"no records with split {split!r} in {list(specs)}; their splits: {dict(found)} "
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
                         types_per_crop=data.synthetic_types_per_crop,
                         seen_crops_per_photo=data.synthetic_seen_crops_per_photo)
        log.info("no synthetic set in %s: generating it (%s)", folder, spec)
        write_synthetic(folder, spec)
    return index


# ---------------------------------------------------------------- image sizes

# (path, mtime, size in bytes) -> (height, width) from the image's header, for every pipeline of the process
_HEADER_SIZES: dict[tuple[str, int, int], tuple[int, int]] = {}


def record_where(record: Mapping[str, Any]) -> str:
    return f"record {record.get('dataset', '?')}/{record.get('id', '?')}"


def _header_size(image: str | bytes, where: str, max_pixels: int) -> tuple[int, int]:
    if not isinstance(image, str):
        return read_image_size(image, where, max_pixels)
    try:
        stat = os.stat(image)
    except OSError:  # read_image_size names what is wrong with the file
        return read_image_size(image, where, max_pixels)
    key = (image, stat.st_mtime_ns, stat.st_size)
    if key not in _HEADER_SIZES:
        _HEADER_SIZES[key] = read_image_size(image, where, max_pixels)
    height, width = _HEADER_SIZES[key]
    check_pixels((width, height), max_pixels, where)  # a size cached under another limit
    return height, width


def image_sizes(source: Any, data: DataSection, report: SkipReport) -> np.ndarray:
    """[N, 2] int: the (height, width) each record's image is resized to, from its header; (0, 0)
    for a bad record skipped under on_bad_record="skip" (added to `report`)."""

    def one(index: int) -> tuple[int, int] | BadRecordError:
        record = source[index]
        where = record_where(record)
        try:
            if data.require_mos and not math.isfinite(record["mos_norm"]):
                raise BadRecordError(where, "missing MOS: the record has no target score (require_mos is on)")
            return resized_size(_header_size(record["image"], where, data.max_image_pixels), data.min_pixels,
                                data.max_pixels, where)
        except BadRecordError as err:
            if data.on_bad_record == "raise":
                raise
            return err
        except Exception as err:  # not a known data problem (never skipped), but say which record
            raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err

    sizes = np.zeros((len(source), 2), np.int64)
    pool = concurrent.futures.ThreadPoolExecutor(data.read_threads, thread_name_prefix="image-headers")
    try:
        for index, size in enumerate(pool.map(one, range(len(source)))):
            if isinstance(size, BadRecordError):
                report.add(size.where, size.reason)
            else:
                sizes[index] = size
    finally:  # after an error, the headers not yet read are not read
        pool.shutdown(cancel_futures=True)
    return sizes


# ---------------------------------------------------------------- the batch plan (indices only)

class EpochPlan(NamedTuple):
    records: np.ndarray  # record indices of the epoch's global batches, one after the other
    sizes: np.ndarray    # rows of each global batch
    starts: np.ndarray   # offset of each global batch in `records`


class BatchPlan:
    """Which records make up each global batch of each epoch: every batch holds images of one
    size (see the module doc). `sizes` is `image_sizes`' output; records of size (0, 0) are left out.

    Deterministic in (sizes, global_batch, seed, epoch); epochs are computed on demand (a few kept).
    The number of batches, their sizes and `dropped` are the same in every epoch.
    """

    def __init__(self, sizes: np.ndarray, global_batch: int, *, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True, in_order: bool = False):
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        self.global_batch, self.seed = global_batch, seed
        self.shuffle, self.drop_remainder, self.in_order = shuffle, drop_remainder, in_order
        usable = self.sizes[:, 0] > 0
        self.grids, keys = np.unique(self.sizes[usable], axis=0, return_inverse=True)
        self.keys = np.full(len(self.sizes), -1, np.int64)
        self.keys[usable] = keys.reshape(-1)
        order = np.argsort(self.keys, kind="stable")
        counts = np.bincount(self.keys[usable], minlength=len(self.grids))
        self._members = np.split(order[len(self.sizes) - usable.sum():], np.cumsum(counts)[:-1])
        self._epochs: dict[int, EpochPlan] = {}
        self._lock = threading.Lock()
        first = self.epoch(0)
        self.batches_per_epoch = len(first.sizes)
        self.dropped = int(usable.sum()) - len(first.records)  # records in left-out remainders, per epoch

    def __getstate__(self) -> dict[str, Any]:  # to grain's worker processes: without the lock and cache
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_epochs")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _epochs={})

    def describe(self) -> str:
        counts = np.bincount(self.keys[self.keys >= 0], minlength=len(self.grids))
        sizes = ", ".join(f"{w}x{h}: {n}" for (h, w), n in zip(self.grids.tolist(), counts.tolist()))
        return (f"{int(counts.sum())} records in {len(self.grids)} image size(s) ({sizes}): "
                f"{self.batches_per_epoch} batches of up to {self.global_batch} per epoch, "
                f"{self.dropped} left over in partial batches (drop_remainder)")

    def epoch(self, epoch: int) -> EpochPlan:
        with self._lock:
            plan = self._epochs.get(epoch)
        if plan is None:
            plan = self._plan(epoch)
            with self._lock:
                if len(self._epochs) >= 4:
                    self._epochs.pop(min(self._epochs))
                self._epochs[epoch] = plan
        return plan

    def _plan(self, epoch: int) -> EpochPlan:
        order = np.flatnonzero(self.keys >= 0)
        keys, size = self.keys, self.global_batch
        batches: list[tuple[int, int]] = []  # (start in `order`, rows)
        if self.in_order:  # consecutive records of one size
            start = 0
            for i in range(1, len(order) + 1):
                if i == len(order) or keys[order[i]] != keys[order[start]] or i - start == size:
                    batches.append((start, i - start))
                    start = i
        else:
            rng = np.random.default_rng((self.seed, epoch))
            if self.shuffle:
                order = rng.permutation(order)
            order = order[np.argsort(keys[order], kind="stable")]
            bounds = [0, *(np.flatnonzero(np.diff(keys[order])) + 1).tolist(), len(order)]
            for begin, end in zip(bounds[:-1], bounds[1:]):
                batches += [(s, min(size, end - s)) for s in range(begin, end, size)
                            if end - s >= size or not self.drop_remainder]
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
        records = (np.concatenate([order[s:s + n] for s, n in batches]) if batches else np.zeros(0, np.int64))
        rows = np.asarray([n for _, n in batches], np.int64)
        return EpochPlan(records, rows, np.cumsum(rows) - rows)

    def stand_ins(self, record: int) -> np.ndarray:
        """`record`, then the other records of its image size after it in dataset order, cyclically."""
        members = self._members[self.keys[record]]
        return np.roll(members, -int(np.searchsorted(members, record)))


class Row(NamedTuple):
    record: int  # index in the source
    epoch: int
    rows: int    # rows of the shard's batch this row belongs to


class ProcessRows:
    """Shard `index` of `count` of a plan's batches, one `Row` per element (a grain source): its
    contiguous `rows` of each global batch, rows [index*rows, (index+1)*rows). A short global batch
    leaves it fewer rows or none (that batch is then not one of its batches)."""

    def __init__(self, plan: BatchPlan, rows: int, index: int, count: int, num_epochs: int | None):
        if rows < 1 or not 0 <= index < count:
            raise ValueError(f"ProcessRows: need rows >= 1 and 0 <= index < count, got {rows}, {index}, {count}")
        self._plan, self._rows, self._index = plan, rows, index
        self._per_epoch = int(self._local(plan.epoch(0).sizes).sum())
        no_end = num_epochs is None and self._per_epoch
        self._length = sys.maxsize if no_end else self._per_epoch * (num_epochs or 0)
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _local(self, sizes: np.ndarray) -> np.ndarray:
        return np.clip(sizes - self._index * self._rows, 0, self._rows)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(end of each of the shard's batches among its rows, their global starts, their rows)."""
        layout = self._layouts.get(epoch)
        if layout is None:
            plan = self._plan.epoch(epoch)
            local = self._local(plan.sizes)
            kept = local > 0
            layout = (np.cumsum(local[kept]), plan.starts[kept], local[kept])
            self._layouts = {epoch: layout}  # the latest epoch only: rows are read (nearly) in order
        return layout

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, element: int) -> Row:
        if not 0 <= element < self._length:
            raise IndexError(f"row {element} out of range for {self._length} rows")
        epoch, position = divmod(element, self._per_epoch)
        ends, starts, local = self._layout(epoch)
        batch = int(np.searchsorted(ends, position, side="right"))
        row = position - (int(ends[batch - 1]) if batch else 0)
        record = self._plan.epoch(epoch).records[starts[batch] + self._index * self._rows + row]
        return Row(int(record), epoch, int(local[batch]))


def per_shard(global_batch: int, shards: int, name: str = "data.global_batch_size") -> int:
    """Rows each of `shards` processes (data shards) reads of a global batch; an error naming both
    numbers when they do not divide."""
    if global_batch % shards:
        raise UserError(f"{name}={global_batch} does not divide over {shards} processes (data shards): "
                         f"make it a multiple of {shards}")
    return global_batch // shards


# ---------------------------------------------------------------- per-example work

class PrepareExample:
    """Row -> example dict (decoded image at its planned size, record fields, optional model
    inputs, `_epoch`, `_rows` and `_skipped`: the (where, reason) of the row's own record when a
    stand-in replaced it)."""

    def __init__(self, source: Any, plan: BatchPlan, data: DataSection, preprocess: Preprocess | None = None):
        self.source = source
        self.plan = plan
        self.min_pixels, self.max_pixels = data.min_pixels, data.max_pixels
        self.max_image_pixels = data.max_image_pixels
        self.preprocess = preprocess
        self.on_bad = data.on_bad_record

    def _example(self, index: int) -> dict[str, Any]:
        record = self.source[index]
        where = record_where(record)
        try:
            pixels = decode_image(read_image_bytes(record["image"], where), where, self.max_image_pixels)
            size = tuple(int(v) for v in self.plan.sizes[index])
            if resized_size(pixels.shape[:2], self.min_pixels, self.max_pixels, where) != size:
                raise BadRecordError(where, f"size mismatch: its header resizes to {size[1]}x{size[0]}, the decoded "
                                            f"{pixels.shape[1]}x{pixels.shape[0]} image does not (the file changed, "
                                            "or its EXIF orientation comes after the pixels)")
            example = {k: record[k] for k in FIELDS if k != "image"}
            pixels = resize_image(pixels, size)
            if self.preprocess is None:
                example["image"] = pixels
            else:
                example.update(self.preprocess(pixels))
        except BadRecordError:
            raise
        except Exception as err:  # not a known data problem (never skipped), but say which record
            raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err
        return example

    def __call__(self, row: Row) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        for index in self.plan.stand_ins(row.record):
            try:
                example = self._example(int(index))
            except BadRecordError as err:
                if self.on_bad == "raise":
                    raise
                if index == row.record:
                    skipped.append((err.where, err.reason))
                continue
            return {**example, "_epoch": row.epoch, "_rows": row.rows, "_skipped": skipped}
        where, reason = skipped[0]
        height, width = self.plan.sizes[row.record]
        raise BadRecordError(where, f"{reason}; and no record of its image size ({width}x{height}) is readable "
                                    "to stand in for it")


class Pass1Preprocess:
    """The Qwen image processor and the pass-1 prompt tokens for one image (jaxbiqa.processing).

    Returns `pixel_values` [patches, C*Tp*P*P] float32, `image_grid_thw` [3], `input_ids` and
    `attention_mask` [T] int32. The image comes resized by the pipeline (sides multiples of 28),
    so the processor only normalises and cuts patches; prompts are cached per visual-token count.
    """

    def __init__(self, processor: Any):
        self.processor = processor
        self._prompts: dict[int, dict[str, np.ndarray]] = {}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        unit = int(self.processor.image_processor.patch_size) * self.processor.merge_size
        if image.shape[0] % unit or image.shape[1] % unit:
            raise ValueError(f"a {image.shape[1]}x{image.shape[0]} image: both sides must be multiples of {unit} "
                             "(resize it with data.images.resized_size first)")
        vision = self.processor.images([image], resize=False)
        tokens = int(self.processor.num_image_tokens(vision["image_grid_thw"])[0])
        if tokens not in self._prompts:
            encoded = self.processor.encode([self.processor.pass1_text(tokens)])
            self._prompts[tokens] = {k: v[0] for k, v in encoded.items()}
        return {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"][0],
                **self._prompts[tokens]}


# ---------------------------------------------------------------- batches, with a skip report per epoch

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


class _BatchRowsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, label: str, on_epoch_end: EpochCallback | None,
                 unusable: SkipReport):
        super().__init__(parent)
        self._label = label
        self._on_epoch_end = on_epoch_end
        self._unusable = unusable
        self._epoch = 0
        self._report = SkipReport(list(unusable.entries))
        self._finished = False

    def _close_epoch(self) -> None:
        summary = self._report.summary(f"{self._label} epoch {self._epoch}")
        (log.warning if len(self._report) else log.info)("%s", summary)
        if self._on_epoch_end is not None:
            self._on_epoch_end(self._epoch, self._report)
        self._report = SkipReport(list(self._unusable.entries))

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            first = next(self._parent)
        except StopIteration:
            if not self._finished:
                self._finished = True
                self._close_epoch()
            raise
        while first["_epoch"] > self._epoch:
            self._close_epoch()
            self._epoch += 1
        rows = [first] + [next(self._parent) for _ in range(first["_rows"] - 1)]
        for row in rows:
            for where, reason in row["_skipped"]:
                self._report.add(where, reason)
        return collate([{k: v for k, v in row.items() if not k.startswith("_")} for row in rows])

    @property
    def epoch(self) -> int:
        """The epoch of the batches returned last (0-based)."""
        return self._epoch

    @property
    def skipped_records(self) -> int:
        """Bad records skipped so far in this epoch (`on_bad_record="skip"`), this process's share."""
        return len(self._report)

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "epoch": self._epoch,
                "skipped": [list(entry) for entry in self._report.entries], "finished": self._finished}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._epoch = int(state["epoch"])
        self._report = SkipReport([tuple(entry) for entry in state["skipped"]])
        self._finished = bool(state["finished"])


class BatchRows(grain.IterDataset):
    """Collates each planned batch from its rows; logs and reports the skipped records per epoch
    (`unusable`: those left out of the plan, listed in every epoch's report)."""

    def __init__(self, parent: grain.IterDataset, label: str = "data", on_epoch_end: EpochCallback | None = None,
                 unusable: SkipReport | None = None):
        super().__init__(parent)
        self._label = label
        self._on_epoch_end = on_epoch_end
        self._unusable = unusable or SkipReport()

    def __iter__(self) -> _BatchRowsIterator:
        return _BatchRowsIterator(self._parent.__iter__(), self._label, self._on_epoch_end, self._unusable)


# ---------------------------------------------------------------- assembly

def _mark_flags_parsed() -> None:
    # grain 0.2.18 reads absl flags when it starts worker processes once jax is importable;
    # nothing parses them in a program that is not an absl app.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def shard_options(data: DataSection) -> grain.sharding.ShardOptions:
    if data.shard_count > 0 and data.shard_index >= 0:
        return grain.sharding.ShardOptions(data.shard_index, data.shard_count, drop_remainder=data.drop_remainder)
    if data.shard_count > 0 or data.shard_index >= 0:
        raise UserError(f"set both shard_index and shard_count, or neither "
                         f"(got {data.shard_index}, {data.shard_count})")
    return grain.sharding.ShardByJaxProcess(drop_remainder=data.drop_remainder)


def plan_batches(source: Any, data: DataSection, *, in_order: bool = False,
                 unusable: SkipReport | None = None) -> BatchPlan:
    """The `BatchPlan` of `source` with `data`'s options; bad headers skipped go to `unusable`."""
    sizes = image_sizes(source, data, unusable if unusable is not None else SkipReport())
    return BatchPlan(sizes, data.global_batch_size, shuffle=data.shuffle, seed=data.seed,
                     drop_remainder=data.drop_remainder, in_order=in_order)


def build_dataset(source: Any, data: DataSection, *, preprocess: Preprocess | None = None,
                  on_epoch_end: EpochCallback | None = None, label: str = "data",
                  shard: grain.sharding.ShardOptions | None = None, in_order: bool = False) -> grain.IterDataset:
    """The batched IterDataset over `source` (random access records) with `data`'s options;
    `in_order`: evaluation batches (record order, cut where the image size changes)."""
    shard = shard or shard_options(data)
    rows = per_shard(data.global_batch_size, shard.shard_count)
    unusable = SkipReport()
    plan = plan_batches(source, data, in_order=in_order, unusable=unusable)
    log.info("%s: %s", label, plan.describe())
    rows_of_shard = ProcessRows(plan, rows, shard.shard_index, shard.shard_count, data.num_epochs)
    if not len(rows_of_shard):
        raise UserError(f"shard {shard.shard_index}/{shard.shard_count} of {len(source)} records is empty "
                         f"({plan.describe()}; each shard reads {rows} of a global batch)")
    # prepared lazily: only the records of this shard's rows are decoded
    ds = grain.MapDataset.source(rows_of_shard).map(PrepareExample(source, plan, data, preprocess))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads,
                                              prefetch_buffer_size=data.prefetch_buffer_size))
    if data.num_workers > 0:
        _mark_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                         per_worker_buffer_size=data.worker_buffer_size))
    return BatchRows(it, label=label, on_epoch_end=on_epoch_end, unusable=unusable)


def _split_source(data: DataSection, split: str) -> tuple[Any, DataSection]:
    """The records of the training (split="train") or evaluation (split="eval") data and the options
    they are read with: eval reads `data.eval` in order, once, keeping partial batches."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    report = SkipReport()
    specs, wanted = (data.train, data.train_split) if split == "train" else (data.eval, data.eval_split)
    source = open_sources(specs, wanted, data, report)
    if len(report):
        log.warning("%s", report.summary(f"{split} label files"))
    if split == "eval":
        data = dataclasses.replace(data, shuffle=False, num_epochs=1, drop_remainder=False)
    return source, data


def make_pipeline(data: DataSection, split: str = "train", *, preprocess: Preprocess | None = None,
                  on_epoch_end: EpochCallback | None = None) -> grain.IterDataset:
    """The training (split="train") or evaluation (split="eval") pipeline from the config."""
    source, data = _split_source(data, split)
    return build_dataset(source, data, preprocess=preprocess, on_epoch_end=on_epoch_end, label=split,
                         in_order=split == "eval")


def batches_per_epoch(data: DataSection, split: str = "train") -> int:
    """Global batches in one epoch of `split`: the same in every epoch and on any number of processes."""
    source, data = _split_source(data, split)
    return plan_batches(source, data, in_order=split == "eval").batches_per_epoch
