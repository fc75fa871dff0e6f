"""Images per second through jaxbiqa's grain pipeline: read + decode + resize to the pixel budget
at each image's own proportions + the Qwen image processor and pass-1 prompt tokens, with 0 and 2
worker processes.

  python benchmarks/pipeline.py [--data SPEC] [--workers 0 2] [--batches 20] [--no-processor]

Without --data it writes a synthetic set (real photographs, 384-px crops, PNG) to a temporary
folder first. The first batch (worker start-up, first decode) is timed separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from jaxbiqa.config import DataSection
from jaxbiqa.data.pipeline import Pass1Preprocess, make_pipeline


def processor(max_pixels: int, min_pixels: int, folder: Path):
    from jaxbiqa.processing import Processor, build_qwen2_5_tokenizer, load_tokenizer, make_image_processor

    return Processor(load_tokenizer(build_qwen2_5_tokenizer(folder)), make_image_processor(min_pixels, max_pixels))


def measure(data: DataSection, batches: int, preprocess) -> dict:
    start = time.perf_counter()
    iterator = iter(make_pipeline(data, "train", preprocess=preprocess))
    batch = next(iterator)
    first = time.perf_counter() - start
    # (height, width) of the first batch's images: from the pixels, or from the patch grid (14 px)
    size = batch["image"].shape[1:3] if "image" in batch else [14 * int(v) for v in batch["image_grid_thw"][0][1:]]
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    return {"workers": data.num_workers, "images_per_s": round(batches * data.global_batch_size / elapsed, 1),
            "first_batch_s": round(first, 2), "batch_size": data.global_batch_size, "image_size": list(size),
            "processor": preprocess is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a dataset spec (KIND:PATH, tfds:DIR, synthetic:DIR)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20, help="batches timed after the first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-pixels", type=int, default=256 * 28 * 28)
    parser.add_argument("--no-processor", action="store_true", help="decode and resize only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        spec = args.data
        if spec is None:
            from jaxbiqa.data.synthetic import SynthSpec, write_synthetic

            folder = Path(tmp) / "synthetic"
            write_synthetic(folder, SynthSpec(crops_per_photo=2, crop_size=384, types_per_crop=1))
            spec = f"synthetic:{folder}"
        data = DataSection(train=(spec,), train_split="", global_batch_size=args.batch_size, max_pixels=args.max_pixels,
                           num_epochs=None, shard_index=0, shard_count=1)
        preprocess = None if args.no_processor else Pass1Preprocess(
            processor(data.max_pixels, data.min_pixels, Path(tmp) / "tokenizer"))
        for workers in args.workers:
            print(json.dumps(measure(dataclasses.replace(data, num_workers=workers), args.batches, preprocess)))


if __name__ == "__main__":  # grain's worker processes import this file again
    main()
