"""The `data` section of the config: every option of the data layer (no heavy imports here).

Dataset specs (`train`, `eval`) are strings, one per dataset, mixed freely:
* `KIND:PATH`: a reader of `jaxbiqa.data.sources` (koniq, spaq, kadid, live_challenge, agiqa3k,
  csiq, pipal, qreasoning, meta_json, conversations, jsonl) on a dataset root or file in its
  original layout; `image_root` applies to the JSON forms that name images by file name;
* `tfds:DIR`: a dataset written by `jaxbiqa data build` (TFDS ArrayRecord, images inside);
* `synthetic:DIR`: the embedded default set written by `jaxbiqa data synth` (its index.jsonl);
  generated there with the `synthetic_*` options when DIR has none yet.
Records are then filtered to `train_split` / `eval_split` (an empty value keeps every split).
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class DataSection:
    train: tuple[str, ...] = ("synthetic:data/synthetic",)
    eval: tuple[str, ...] = ("synthetic:data/synthetic",)
    train_split: str = "train"
    eval_split: str = "test"
    image_root: str = ""               # folder of the images for Q-Reasoning / meta / conversation files
    split_file: str = ""               # a user split file applied to every `KIND:PATH` spec that takes one
    mos_scale: Literal["table", "data"] = "table"   # records.MOS_SCALES, or min/max of the data
    require_mos: bool = True           # a record without a MOS is a bad record (off for text-only eval)

    # images keep their aspect ratio: each is resized as Qwen2.5-VL's processor does (sides
    # multiples of 28 px, about min..max pixels; images.resized_size) and every batch holds images
    # of one size (pipeline.BatchPlan), e.g. KonIQ 512x384 -> 504x392 (252 tokens), 512x512 -> 448x448
    max_pixels: int = 200_704          # 256 x 28 x 28: at most 256 visual tokens
    min_pixels: int = 3_136            # 56 x 56, the Qwen2.5-VL processor's default

    # iteration
    global_batch_size: int = 8         # records per step over all processes (each reads its 1/P share)
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = 1         # None repeats forever (each epoch reshuffled)
    drop_remainder: bool = True        # drop each image size's last, partial batch (else keep it short)
    num_workers: int = 0               # grain worker processes; 0 decodes in this process
    worker_buffer_size: int = 2
    read_threads: int = 8
    prefetch_buffer_size: int = 64
    shard_index: int = -1              # -1: this JAX process (ShardByJaxProcess)
    shard_count: int = 0               # 0: the number of JAX processes
    on_bad_record: Literal["raise", "skip"] = "raise"

    # the embedded synthetic set, generated into a `synthetic:DIR` spec's empty folder
    # (the same as `jaxbiqa data synth --out DIR` with these options)
    synthetic_seed: int = 0
    synthetic_num_photos: int = 0      # 0: all of synthetic.PHOTOS
    synthetic_crop_size: int = 96
    synthetic_crops_per_photo: int = 3
    synthetic_types_per_crop: int = 2
    synthetic_seen_crops_per_photo: int = 0  # new crops of the training photos: the `seen` split

    def __post_init__(self) -> None:
        problems = []
        if self.global_batch_size < 1:
            problems.append(f"global_batch_size={self.global_batch_size} must be >= 1")
        if self.num_workers < 0 or self.read_threads < 1:
            problems.append(f"num_workers={self.num_workers} must be >= 0 and read_threads={self.read_threads} >= 1")
        if not 0 < self.min_pixels <= self.max_pixels:
            problems.append(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.num_epochs is not None and self.num_epochs < 1:
            problems.append(f"num_epochs={self.num_epochs} must be >= 1 (or None for no end)")
        if self.on_bad_record not in ("raise", "skip"):
            problems.append(f"on_bad_record={self.on_bad_record!r} must be 'raise' or 'skip'")
        if self.mos_scale not in ("table", "data"):
            problems.append(f"mos_scale={self.mos_scale!r} must be 'table' or 'data'")
        if problems:
            raise ValueError("data section: " + "; ".join(problems))
