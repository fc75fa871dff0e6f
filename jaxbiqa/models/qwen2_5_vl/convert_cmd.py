"""`jaxbiqa convert`: check a Hugging Face Qwen2.5-VL checkpoint, re-export it, or size a config.

    jaxbiqa convert --from-hf DIR [--to-hf OUT] [--mesh data=1,fsdp=8,tensor=1]
                    [--param-dtype bfloat16] [--max-shard-size 5GB] [--json]
        Load DIR (config.json + model.safetensors or a sharded index) exactly as
        `from_pretrained` does, with all of its checks (every tensor used, every parameter loaded,
        shapes match), optionally sharded over a mesh of this machine's devices, and print the
        size report of the loaded model. With --to-hf, write it back in the Hugging Face layout
        (e.g. cast with --param-dtype, or re-sharded files with --max-shard-size).

    jaxbiqa convert --size CONFIG [--mesh data=2,fsdp=64,tensor=4] [--param-dtype bfloat16] [--json]
        Abstract size report (parameter counts, bytes per device) with nothing allocated and no
        devices needed. CONFIG is a config.json, a checkpoint directory, or `qwen2.5-vl-7b`.

--mesh takes `axis=size` pairs over the axes data, fsdp, tensor (one size may be -1 with
--from-hf: the rest of the devices). Exit status 0 on success, 1 when the checkpoint does not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from jaxbiqa.sharding import MESH_AXES

PRESETS = ("qwen2.5-vl-7b",)


def parse_mesh(text: str) -> dict[str, int]:
    """`data=1,fsdp=8,tensor=1` -> {"data": 1, "fsdp": 8, "tensor": 1}."""
    shape: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, size = part.partition("=")
        if not sep or name not in MESH_AXES or not size.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected axis=size pairs over {MESH_AXES}, "
                                             f"got {part!r}")
        if name in shape:
            raise argparse.ArgumentTypeError(f"--mesh {text!r}: axis {name!r} given twice")
        shape[name] = int(size)
    if not shape:
        raise argparse.ArgumentTypeError("--mesh: empty")
    return shape


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR", help="Hugging Face checkpoint directory to load and check")
    source.add_argument("--size", metavar="CONFIG", help=f"config.json, checkpoint directory or {' / '.join(PRESETS)}")
    parser.add_argument("--to-hf", metavar="OUT", help="with --from-hf: write the loaded model to OUT (HF layout)")
    parser.add_argument("--mesh", type=parse_mesh, help="mesh axis sizes, e.g. data=1,fsdp=8,tensor=1")
    parser.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype (default: the checkpoint's / config's own)")
    parser.add_argument("--max-shard-size", default="5GB", help="with --to-hf: largest safetensors file (default 5GB)")
    parser.add_argument("--json", action="store_true", help="print the size report as JSON")


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**dataclasses.asdict(report), "total_params": report.total_params}, indent=2))
    else:
        print(report.summary())


def _size(args: argparse.Namespace) -> int:
    from jaxbiqa.models.qwen2_5_vl.size import qwen2_5_vl_7b, size_report
    from jaxbiqa.models.qwen2_5_vl.weights import read_config

    if args.size == "qwen2.5-vl-7b":
        dtype = args.param_dtype or "bfloat16"  # the released checkpoints' dtype
        config = qwen2_5_vl_7b(param_dtype=dtype, dtype=dtype)
    else:
        config = read_config(args.size, param_dtype=args.param_dtype)
    _print_report(size_report(config, args.mesh), args.json)
    return 0


def _from_hf(args: argparse.Namespace) -> int:
    from jaxbiqa.models.qwen2_5_vl.size import size_report
    from jaxbiqa.models.qwen2_5_vl.weights import from_pretrained, save_pretrained
    from jaxbiqa.sharding import make_mesh

    mesh = make_mesh(args.mesh) if args.mesh else None
    model = from_pretrained(args.from_hf, param_dtype=args.param_dtype, mesh=mesh)
    print(f"{args.from_hf}: every tensor loaded and checked", file=sys.stderr)
    _print_report(size_report(model.config, mesh), args.json)
    if args.to_hf:
        written = save_pretrained(model, args.to_hf, max_shard_size=args.max_shard_size)
        print(f"wrote {len(written)} files to {args.to_hf}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.to_hf and not args.from_hf:
        print("jaxbiqa convert: --to-hf needs --from-hf", file=sys.stderr)
        return 2
    return _from_hf(args) if args.from_hf else _size(args)
