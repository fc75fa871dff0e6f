"""`jaxbiqa score IMAGE...`: caption, reasoning and rating of image files, as a table or JSON.

  jaxbiqa score photo.jpg other.png [--checkpoint PATH] [--config RECIPE] [--set k=v] [--json] [--output FILE]

The model comes from --checkpoint (see `jaxbiqa eval`), else from the config's `model.path`; with
neither --checkpoint nor --config, from the demo's run (`runs/demo`, written by `jaxbiqa demo`) when
it exists. Every image keeps its proportions: it is resized as in training (Qwen2.5-VL's grid,
`data.min_pixels` .. `data.max_pixels`), images of one size are batched together, and each batch is
rated with the same compiled two-pass program as `jaxbiqa eval` (one compile per image size; default
decoding: the authors' sampling with seed 42; `--decoding greedy` for argmax). Per image:
the caption and reasoning of pass 1 and its rating, plus the ratings pass 2 gives from the caption
alone and from the caption + reasoning. Unreadable images (missing, empty, truncated, not an image,
over the decompression-bomb limit `data.max_image_pixels`) are all reported by name before any
model is loaded, and the command exits with status 2. Memory stays bounded: the check decodes one
image at a time and keeps its size only; each batch's images are decoded again when it is rated.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxbiqa.config import ConfigError, load_config
from jaxbiqa.data.records import BadRecordError
from jaxbiqa.demo_assets import resolve_demo_model
from jaxbiqa.eval.eval_cmd import add_checkpoint_arguments, add_decoding_arguments, settings_from_args
from jaxbiqa.eval.policy import load_policy
from jaxbiqa.eval.predictions import json_safe
from jaxbiqa.paths import atomic_write

USAGE_ERROR = 2  # as `jaxbiqa.cli` reports every user error
DEMO_RUN = Path("runs") / "demo"  # `jaxbiqa demo`'s output directory


def check_images(paths: Sequence[str], max_pixels: int) -> tuple[list[tuple[int, int]], list[str]]:
    """((height, width) each image decodes to, errors): every path is read and decoded once, one at a
    time, and only its size is kept; each failure is one message naming the file."""
    from jaxbiqa.data.images import decode_image, read_image_bytes

    shapes, errors = [], []
    for path in paths:
        try:
            shapes.append(decode_image(read_image_bytes(path, path), path, max_pixels).shape[:2])
        except BadRecordError as err:
            errors.append(f"cannot read image {err}")
    return shapes, errors


def score_images(model, processor, paths: Sequence[str], shapes: Sequence[tuple[int, int]], *, rollout, data,
                 settings) -> list[dict[str, Any]]:
    """One entry per image file, in the order given: the size it was rated at ("WxH"), caption,
    reasoning, rating (pass 1), caption_rating (pass 2 from the caption), caption_think_rating (pass
    2 from caption + reasoning), and the pass-1 completion. Images (of decoded size `shapes`, from
    `check_images`) are resized with `data`'s pixel budget and rated in batches of one size, each
    batch decoded when it is rated."""
    import jax

    from jaxbiqa.data.images import decode_image, read_image_bytes, resize_image, resized_size
    from jaxbiqa.data.pipeline import Pass1Preprocess, collate
    from jaxbiqa.eval.evaluate import Evaluator, completion_parts, fill_batch
    from jaxbiqa.parse import parse_rating

    evaluator = Evaluator(processor, rollout, model.config.text.vocab_size, settings)
    preprocess = Pass1Preprocess(processor)
    sizes = [resized_size(shape, data.min_pixels, data.max_pixels, path) for shape, path in zip(shapes, paths)]
    chunks = []  # positions of images of one size, at most batch_size each
    for _, members in itertools.groupby(sorted(range(len(paths)), key=sizes.__getitem__), key=sizes.__getitem__):
        group = list(members)
        chunks += [group[start:start + settings.batch_size] for start in range(0, len(group), settings.batch_size)]
    base_key = jax.random.key(settings.seed)
    entries: list[dict[str, Any]] = [{} for _ in paths]
    for index, chunk in enumerate(chunks):
        pixels = (decode_image(read_image_bytes(paths[i], paths[i]), paths[i], data.max_image_pixels) for i in chunk)
        batch = collate([preprocess(resize_image(image, sizes[i])) for i, image in zip(chunk, pixels)])
        full, _ = fill_batch(batch, settings.batch_size)
        out = evaluator(model, evaluator.prepare(model, full), jax.random.fold_in(base_key, index))
        for i, position in enumerate(chunk):
            text = out.pass1_texts[i]
            entry = {"image": paths[position], "size": f"{sizes[position][1]}x{sizes[position][0]}",
                     **completion_parts(text)}
            if out.caption_texts is not None:
                for key, texts, has in (("caption_rating", out.caption_texts, out.has_caption),
                                        ("caption_think_rating", out.reasoning_texts, out.has_reasoning)):
                    entry[key] = parse_rating(texts[i], strict=settings.strict_parse) if has[i] else math.nan
            entry["completion"] = text
            entries[position] = json_safe(entry)
    return entries


def _rating(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_entries(entries: Sequence[dict[str, Any]], width: int = 100) -> str:
    """A readable report: per image its ratings, then the caption and the reasoning, wrapped."""
    out = []
    for entry in entries:
        line = f"{entry['image']}: rating {_rating(entry['rating'])}"
        if "caption_rating" in entry:
            line += (f"  (from its caption alone: {_rating(entry['caption_rating'])}; caption + reasoning: "
                     f"{_rating(entry['caption_think_rating'])})")
        out.append(line)
        for label in ("caption", "reasoning"):
            text = entry[label] if entry[label] is not None else f"(no {label} in the output)"
            out.append(textwrap.fill(" ".join(text.split()), width, initial_indent=f"  {label}: ",
                                     subsequent_indent=" " * (len(label) + 4)))
    return "\n".join(out)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    add_checkpoint_arguments(parser)
    add_decoding_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (a list, one object per image)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON list to this file")


def run(args: argparse.Namespace) -> int:
    # the decompression-bomb limit of the config and --set given (a checkpoint's own config comes later)
    shapes, errors = check_images(args.images, load_config(args.config, args.overrides).data.max_image_pixels)
    if errors:
        for message in errors:
            print(f"jaxbiqa score: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    checkpoint = args.checkpoint
    if checkpoint is None and args.config is None:
        if not DEMO_RUN.is_dir():
            raise ConfigError(f"no model: pass --checkpoint PATH or --config RECIPE (or run `jaxbiqa demo` first, "
                              f"whose run {DEMO_RUN} is the default)")
        checkpoint = str(DEMO_RUN)
    policy = load_policy(checkpoint, args.config, args.overrides, step=args.step, prepare=resolve_demo_model)
    settings = settings_from_args(args, policy.config)
    if not args.batch_size:  # no padding beyond the images given
        settings = dataclasses.replace(settings, batch_size=min(settings.batch_size, len(shapes)))
    entries = score_images(policy.model, policy.processor, args.images, shapes, rollout=policy.config.rollout,
                           data=policy.config.data, settings=settings)
    entries = [{**entry, "model": policy.source} for entry in entries]  # which weights rated it
    if policy.source["kind"] == "random":
        print(f"jaxbiqa score: note: randomly initialised weights (model.init=random, seed "
              f"{policy.source['seed']}): the ratings mean nothing", file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.output, json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(entries, indent=2, ensure_ascii=False) if args.json else format_entries(entries))
    return 0
