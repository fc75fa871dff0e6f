"""`jaxbiqa data`: synthesise the embedded default set, build TFDS datasets, inspect datasets.

  jaxbiqa data synth --out DIR [--seed N] [--num-photos N] [--crops-per-photo N] ...
  jaxbiqa data build --source KIND --root PATH --out DIR [--name NAME] [--option key=value ...]
  jaxbiqa data inspect DIR_OR_SPEC
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from jaxbiqa.config import DataSection, UserError
from jaxbiqa.data.records import SkipReport, summarise


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    synth = sub.add_parser("synth", help="write the offline distortion set made from real photographs")
    synth.add_argument("--out", required=True, help="output folder (images/, index.jsonl, info.json)")
    defaults = DataSection()
    synth.add_argument("--seed", type=int, default=defaults.synthetic_seed)
    synth.add_argument("--num-photos", type=int, default=None, help="use the first N photos (default: all)")
    synth.add_argument("--photos", default=None, help="comma-separated photo names (see synthetic.PHOTOS)")
    synth.add_argument("--crops-per-photo", type=int, default=defaults.synthetic_crops_per_photo)
    synth.add_argument("--crop-size", type=int, default=defaults.synthetic_crop_size)
    synth.add_argument("--types-per-crop", type=int, default=defaults.synthetic_types_per_crop,
                       help="distortion types per crop, each at 5 levels")
    synth.add_argument("--test-fraction", type=float, default=0.25, help="share of photos held out as the test split")
    synth.add_argument("--seen-crops-per-photo", type=int, default=defaults.synthetic_seen_crops_per_photo,
                       help="new crops of each training photo for the `seen` split (0: none)")
    synth.add_argument("--no-clean", action="store_true", help="leave out the undistorted crops")

    build = sub.add_parser("build", help="read a dataset in its original layout and write a TFDS ArrayRecord dataset")
    build.add_argument("--source", required=True, help="reader kind (koniq, spaq, kadid, ..., qreasoning, jsonl)")
    build.add_argument("--root", required=True, help="dataset root folder, or the file for the JSON forms")
    build.add_argument("--out", required=True, help="TFDS data dir to write into")
    build.add_argument("--name", default=None, help="dataset name in the output (default: the source kind)")
    build.add_argument("--split", default=None, help="one split for every record")
    build.add_argument("--split-file", default=None, help="a split file (JSON or CSV, see sources.common)")
    build.add_argument("--image-root", default=None, help="image folder for the JSON forms")
    build.add_argument("--scale", choices=("table", "data"), default="table", help="MOS normalisation")
    build.add_argument("--on-bad-record", choices=("raise", "skip"), default="raise")
    build.add_argument("--no-verify", action="store_true", help="do not decode every image while building")
    build.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a reader keyword argument (e.g. image_dir=1024x768, score_column=MOS)")

    show = sub.add_parser("inspect", help="counts, splits and MOS range of a dataset")
    show.add_argument("target", help="a `data build` output folder, a `data synth` folder, or KIND:PATH")


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    from jaxbiqa.data.sources import READERS

    options: dict[str, Any] = {"on_bad": args.on_bad_record, "report": SkipReport()}
    accepted = inspect.signature(READERS[args.source]).parameters
    for name, value in (("split", args.split), ("split_file", args.split_file), ("image_root", args.image_root)):
        if value is not None:
            if name not in accepted:
                raise UserError(f"--{name.replace('_', '-')} does not apply to {args.source}")
            options[name] = value
    if "scale" in accepted:
        options["scale"] = args.scale
    if args.source == "meta_json":
        options["dataset"] = args.name or "meta"
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or key not in accepted:
            raise UserError(f"bad --option {item!r} for {args.source}; its options: {', '.join(accepted)}")
        options[key] = value
    return options


def _synth(args: argparse.Namespace) -> int:
    from jaxbiqa.data.synthetic import PHOTO_NAMES, SynthSpec, write_synthetic

    photos = tuple(p.strip() for p in args.photos.split(",")) if args.photos else PHOTO_NAMES
    if args.num_photos is not None:
        photos = photos[: args.num_photos]
    spec = SynthSpec(seed=args.seed, photos=photos, crops_per_photo=args.crops_per_photo, crop_size=args.crop_size,
                     types_per_crop=args.types_per_crop, include_clean=not args.no_clean,
                     test_fraction=args.test_fraction, seen_crops_per_photo=args.seen_crops_per_photo)
    index = write_synthetic(args.out, spec)
    info = json.loads((index.parent / "info.json").read_text())
    print(f"wrote {info['count']} images ({info['splits']}) to {index.parent}; index: {index}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from jaxbiqa.data.sources import READERS, read_source
    from jaxbiqa.data.tfds_builder import build_tfds

    if args.source not in READERS:
        raise UserError(f"unknown source {args.source!r}; known: {', '.join(READERS)}")
    options = _reader_options(args)
    report = options["report"]
    records = read_source(args.source, args.root, **options)
    built = build_tfds(records, args.out, args.name or args.source, on_bad=args.on_bad_record,
                       verify_images=not args.no_verify)
    for label, rep in (("labels", report), ("images", built.report)):
        if len(rep):
            print(rep.summary(label), file=sys.stderr)
    skipped = {"labels": len(report), "images": len(built.report)}  # bad label rows; records with a bad image
    print(json.dumps({"path": str(built.path), **summarise(built.written), "skipped": skipped}, indent=1))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    target = args.target
    if Path(target).is_dir():
        target = f"synthetic:{target}" if (Path(target) / "index.jsonl").is_file() else f"tfds:{target}"
    kind, _, path = target.partition(":")
    if kind == "tfds":
        from tqdm import tqdm

        from jaxbiqa.data.tfds_builder import TfdsRecords

        source = TfdsRecords(path)
        records = [source[i] for i in tqdm(range(len(source)), desc="reading", unit="record")]
    else:
        from jaxbiqa.data.sources import read_source

        if kind == "synthetic":
            kind, path = "jsonl", str(Path(path) / "index.jsonl")
        records = read_source(kind, path)
    print(json.dumps(summarise(records), indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"synth": _synth, "build": _build, "inspect": _inspect}[args.action](args)
