"""`jaxbiqa plan`: per-device memory of a GRPO run for a model, a mesh and an accelerator.

    jaxbiqa plan MODEL [--hardware NAME[,NAME...]] [--mesh data=1,fsdp=-1,tensor=1] [--devices N]
                 [--memory 80GiB] [--mode full[,lora]] [--prompts 64] [--samples 4] ... [--json|--markdown]

MODEL is `qwen2.5-vl-7b`, a config.json or a checkpoint directory. Hardware presets: {presets}
(devices and memory per device; --devices / --memory describe anything else). The mesh defaults to
FSDP over every device; one size may be -1. Modes: `full` fine-tuning (parameters float32 by
default: master weights for bf16 compute) and `lora` (rank --lora-rank on every decoder
projection, a bfloat16 base under float32 adapters by default); the vision tower is frozen unless
--train-vision.

`--config humaniqa[,qinsight_score,...]` plans what those recipes run instead (one row each): their
dtypes, LoRA, remat, mesh, sharding rules, global batch, G, new tokens, longest pass-1 prompt bucket,
micro-batch, frozen vision and reference; --mesh and the training and step options then do not apply.

A mesh axis must divide every dimension it shards (`jaxbiqa.sharding.ShardingError` says which);
`--rules kv_heads=` (as `runtime.rules`) replicates a logical axis instead, and the plan reports the
axes so replicated.

One hardware and one mode print a breakdown; several print a table (one row each; --markdown for
Markdown). Parameters, gradients, optimizer state and KV cache are exact for the layout jaxbiqa
builds; activations and the rollout working set are estimates (formulas: `jaxbiqa.plan`).
Exit status: 0, or 1 with --check when a plan does not fit; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from jaxbiqa.plan import ACCELERATORS, GiB

MODEL_PRESETS = ("qwen2.5-vl-7b",)
# pass 2's prompt beyond the caption: the chat template and the method's instruction (64 tokens
# with the Qwen tokenizer, rounded up; `Rollout.pass2_width` is the exact width of a run)
PASS2_TEMPLATE_TOKENS = 64
DTYPES = ("float32", "bfloat16", "float16")
UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """`80GiB`, `141GB`, `512MiB` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]+)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"--memory {text!r}: expected a number and a unit ({', '.join(UNITS)})")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    doc = __doc__.format(presets=", ".join(ACCELERATORS))
    parser.description = doc.split("\n\n")[0].split(": ", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = doc.split("\n\n", 1)[1]
    from jaxbiqa.models.qwen2_5_vl.convert_cmd import parse_mesh

    parser.add_argument("model", help=f"{' / '.join(MODEL_PRESETS)}, a config.json or a checkpoint directory")
    where = parser.add_argument_group("hardware and mesh")
    where.add_argument("--hardware", type=_names, default=[],
                       help=f"presets, comma separated: {', '.join(ACCELERATORS)}")
    where.add_argument("--mesh", type=parse_mesh, default={"data": 1, "fsdp": -1, "tensor": 1},
                       help="axis sizes, one may be -1 (default data=1,fsdp=-1,tensor=1)")
    where.add_argument("--devices", type=int, help="device count without --hardware (resolves a -1 in --mesh)")
    where.add_argument("--rules", action="append", default=[], metavar="LOGICAL=AXES",
                       help="a sharding rule as runtime.rules (repeatable), e.g. kv_heads= to replicate the KV heads")
    where.add_argument("--memory", type=parse_bytes, help="memory per device without --hardware, e.g. 80GiB")
    where.add_argument("--headroom", type=float, default=0.9, help="usable share of the memory (default 0.9)")
    training = parser.add_argument_group("training")
    training.add_argument("--config", type=_names, default=[],
                          help="recipes (names in configs/ or files), comma separated: plan what they run")
    training.add_argument("--mode", type=_names, default=["full"], help="full, lora, or both: full,lora")
    training.add_argument("--lora-rank", type=int, default=8)
    training.add_argument("--train-vision", action="store_true", help="train the vision tower too")
    training.add_argument("--no-reference", action="store_true", help="no KL term (beta = 0): no reference policy")
    training.add_argument("--no-remat", action="store_true", help="no rematerialisation of decoder layers")
    training.add_argument("--param-dtype", choices=DTYPES, help="default float32 (full) / bfloat16 (lora)")
    training.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="compute and KV-cache dtype")
    step = parser.add_argument_group("step (the method's recipe by default)")
    defaults = _default_workload()
    step.add_argument("--prompts", type=int, default=defaults.prompts)
    step.add_argument("--samples", type=int, default=defaults.samples, help="samples per prompt (G)")
    step.add_argument("--prompt-length", type=int, default=defaults.prompt_length, help="padded prompt tokens")
    step.add_argument("--image-tokens", type=int, default=defaults.image_tokens)
    step.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    step.add_argument("--pass2-prompt-length", type=int, default=defaults.pass2_prompt_length,
                      help="pass 2's prompt: caption budget + template (0: no pass 2)")
    step.add_argument("--pass2-new-tokens", type=int, default=defaults.pass2_new_tokens)
    step.add_argument("--rollout-layout", choices=("training", "tensor", "replicated"),
                      default=defaults.rollout_layout, help="rollout.policy_layout: the rollout's copy of the policy")
    step.add_argument("--micro-batch", type=int, default=0, help="rows per update micro-batch (0: all at once)")
    step.add_argument("--chunk", type=int, default=defaults.logprob_chunk_size, help="log-prob sequence chunk")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="a JSON list, one object per plan")
    out.add_argument("--markdown", action="store_true", help="a Markdown table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a plan does not fit")


def _default_workload():
    from jaxbiqa.plan import Workload

    return Workload()


def _model_config(args: argparse.Namespace, mode: str):
    from jaxbiqa.models.qwen2_5_vl.config import LoraConfig

    runtime = dict(param_dtype=args.param_dtype or ("float32" if mode == "full" else "bfloat16"), dtype=args.dtype,
                   remat=not args.no_remat, lora=LoraConfig(rank=args.lora_rank) if mode == "lora" else None)
    return _read_model(args, runtime)


def _read_model(args: argparse.Namespace, runtime: dict[str, Any]):
    from jaxbiqa.models.qwen2_5_vl.size import qwen2_5_vl_7b
    from jaxbiqa.models.qwen2_5_vl.weights import read_config

    if args.model == "qwen2.5-vl-7b":
        return qwen2_5_vl_7b(**runtime)
    if not Path(args.model).exists():
        raise ValueError(f"model {args.model!r} is neither {' / '.join(MODEL_PRESETS)} nor a file or directory")
    return read_config(args.model, **runtime)


def _targets(args: argparse.Namespace) -> list[tuple[str, int | None, int | None, str]]:
    """(label, devices, memory per device, description) of each hardware to plan for."""
    if args.hardware:
        unknown = [h for h in args.hardware if h.lower() not in ACCELERATORS]
        if unknown:
            raise ValueError(f"unknown hardware {unknown[0]!r}; presets: {', '.join(ACCELERATORS)}")
        return [(a.name, a.devices, a.memory_bytes, a.description)
                for a in (ACCELERATORS[h.lower()] for h in args.hardware)]
    return [("custom", args.devices, args.memory, "")]


def _mesh_shape(mesh: dict[str, int], devices: int | None) -> dict[str, int]:
    from jaxbiqa.distributed import resolve_mesh_shape

    if devices is None:
        if -1 in mesh.values():
            raise ValueError(f"--mesh {_mesh_text(mesh)} has a -1 size: give --devices N or --hardware")
        return dict(mesh)
    return resolve_mesh_shape(mesh, devices, "--mesh")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def _recipe_runs(args: argparse.Namespace) -> list[tuple[str, Any, Any, dict[str, int]]]:
    """(label, model config, workload, mesh) of each `--config` recipe."""
    from jaxbiqa.config import load_config
    from jaxbiqa.models.qwen2_5_vl.config import LoraConfig
    from jaxbiqa.plan import Workload

    runs = []
    for name in args.config:
        config = load_config(name)
        model, pass1 = config.model, config.rollout.pass1
        lora = None if not model.lora_rank else LoraConfig(rank=model.lora_rank, param_dtype=model.lora_dtype)
        model_config = _read_model(args, dict(param_dtype=model.param_dtype, dtype=model.dtype, remat=model.remat,
                                              lora=lora))
        rollout, pass2 = config.rollout, config.rollout.pass2
        caption = rollout.max_caption_tokens or pass1.max_new_tokens
        workload = Workload(prompts=config.data.global_batch_size, samples=pass1.num_samples,
                            prompt_length=max(pass1.prompt_buckets, default=Workload.prompt_length),
                            new_tokens=pass1.max_new_tokens, micro_batch_size=config.optim.micro_batch_size,
                            freeze_vision=config.optim.freeze_vision, reference=config.grpo.beta > 0,
                            logprob_chunk_size=config.grpo.logprob_chunk_size,
                            pass2_prompt_length=caption + PASS2_TEMPLATE_TOKENS if rollout.two_pass else 0,
                            pass2_new_tokens=pass2.max_new_tokens, pass2_samples=pass2.num_samples,
                            rollout_layout=rollout.policy_layout)
        mode = "lora" if model.lora_rank else "full"
        runs.append((f"{config.name} ({mode})", model_config, workload, dict(config.runtime.mesh),
                     dict(config.runtime.rules)))
    return runs


def _option_runs(args: argparse.Namespace) -> list[tuple[str, Any, Any, dict[str, int]]]:
    """(label, model config, workload, mesh) of each `--mode` with the command's step options."""
    from jaxbiqa.plan import Workload

    workload = Workload(prompts=args.prompts, samples=args.samples, prompt_length=args.prompt_length,
                        image_tokens=args.image_tokens, new_tokens=args.new_tokens,
                        micro_batch_size=args.micro_batch, freeze_vision=not args.train_vision,
                        reference=not args.no_reference, logprob_chunk_size=args.chunk,
                        pass2_prompt_length=args.pass2_prompt_length, pass2_new_tokens=args.pass2_new_tokens,
                        rollout_layout=args.rollout_layout)
    bad = [m for m in args.mode if m not in ("full", "lora")]
    if bad:
        raise ValueError(f"--mode {bad[0]!r}: expected full, lora or full,lora")
    rules = dict(rule.split("=", 1) if "=" in rule else (rule, "") for rule in args.rules)
    return [(mode, _model_config(args, mode), workload, args.mesh, rules) for mode in args.mode]


def _build(args: argparse.Namespace) -> list[dict[str, Any]]:
    from jaxbiqa.config import RuntimeSection
    from jaxbiqa.distributed import rules_from_config
    from jaxbiqa.plan import batch_shards, largest_fitting_micro_batch, plan, replicated_axes

    runs = _recipe_runs(args) if args.config else _option_runs(args)
    rows = []
    for label, devices, memory, description in _targets(args):
        for mode, config, workload, mesh, rule_text in runs:
            shape = _mesh_shape(mesh, devices)
            rules = rules_from_config(RuntimeSection(rules=rule_text))
            result = plan(config, shape, workload, capacity=memory, headroom=args.headroom, rules=rules)
            fitting = None if memory is None else largest_fitting_micro_batch(
                config, shape, workload, capacity=memory, headroom=args.headroom, rules=rules)
            rows.append(dict(hardware=label, description=description, mode=mode, model=args.model,
                             batch_shards=batch_shards(shape, rules), replicated=replicated_axes(rules),
                             param_dtype=config.param_dtype, dtype=config.dtype, workload=dataclasses.asdict(workload),
                             **result.as_dict(), largest_fitting_micro_batch=fitting))
    return rows


def _mesh_text(mesh: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def _print_breakdown(row: dict[str, Any]) -> None:
    w = row["workload"]
    devices = math.prod(row["mesh"].values())
    vision = "trained" if not w["freeze_vision"] else "frozen"
    lines = [
        f"model: {row['model']}, {row['total_params']:,} parameters; {row['mode']} fine-tuning, vision {vision}: "
        f"{row['trainable_params']:,} trainable",
        f"hardware: {row['description'] or row['hardware']}",
        f"mesh: {_mesh_text(row['mesh'])} ({devices} devices)",
        f"step: {w['prompts']} prompts x {w['samples']} samples = {w['prompts'] * w['samples']} rows of "
        f"{w['prompt_length']} + {w['new_tokens']} tokens, pass 2 of {w['pass2_prompt_length']} + "
        f"{w['pass2_new_tokens']}; update micro-batch of {row['micro_rows_per_device']} rows per device",
        f"dtypes: parameters {row['param_dtype']}, compute and KV cache {row['dtype']}",
        f"replicated by rule: {', '.join(row['replicated']) or 'nothing'}",
        "",
        f"{'per device':<56}{'GiB':>9}",
    ]
    remat = "with remat per layer" if row["remat"] else "without remat"
    other = "without remat" if row["remat"] else "with remat per layer"
    items = [
        ("parameters (trainable + frozen)", row["parameters"]),
        ("reference policy", row["reference"]),
        ("gradients (float32 accumulator + one step)", row["gradients"]),
        ("optimizer state (AdamW)", row["optimizer"]),
        (f"rollout copy of the policy ({w['rollout_layout']})", row["rollout_copy"]),
        ("KV cache, pass 1", row["kv_cache"]),
        ("pass-1 working set (estimate)", row["rollout_activations"]),
        ("KV cache, pass 2", row["pass2_kv_cache"]),
        ("pass-2 working set (estimate)", row["pass2_activations"]),
        (f"activations, update, {remat} (estimate)", row["update_activations"]),
        (f"  for comparison: {other}", row["update_activations_other"]),
        ("peak during rollout", row["rollout_peak"]),
        ("peak during update", row["update_peak"]),
    ]
    lines += [f"  {name:<54}{_gib(value):>9}" for name, value in items]
    if row["capacity"] is not None:
        usable = int(row["capacity"] * row["headroom"])
        verdict = "fits" if row["fits"] else "does NOT fit"
        lines.append(f"memory {_gib(row['capacity'])} GiB x {row['headroom']} headroom = {_gib(usable)} GiB: "
                     f"{verdict} (peak {_gib(row['peak'])} GiB)")
        micro = row["largest_fitting_micro_batch"]
        lines.append("largest update micro-batch that fits: "
                     + (f"{micro} rows ({micro // row['batch_shards']} per device)" if micro else "none"))
    print("\n".join(lines))


COLUMNS = (("hardware", "hardware"), ("mode", "mode"), ("mesh", "mesh"), ("params", "parameters"),
           ("reference", "reference"), ("grads", "gradients"), ("optimizer", "optimizer"),
           ("rollout copy", "rollout_copy"), ("KV cache", "kv_cache"), ("pass-2 KV", "pass2_kv_cache"),
           ("activations", "update_activations"), ("peak", "peak"), ("usable", "usable"), ("fits", "fits"),
           ("micro-batch that fits", "largest_fitting_micro_batch"), ("replicated by rule", "replicated"))


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "mesh":
        return _mesh_text(row["mesh"])
    if key == "usable":
        return "-" if row["capacity"] is None else _gib(int(row["capacity"] * row["headroom"]))
    value = row[key]
    if key == "fits":
        return "-" if value is None else "yes" if value else "NO"
    if key == "replicated":
        return ", ".join(row[key]) or "-"
    if key == "largest_fitting_micro_batch":
        return "-" if row["capacity"] is None else str(value) if value else "none"
    return _gib(value) if isinstance(value, int) and key not in ("hardware", "mode") else str(value)


def _print_table(rows: list[dict[str, Any]], markdown: bool) -> None:
    header = [name for name, _ in COLUMNS]
    body = [[_cell(row, key) for _, key in COLUMNS] for row in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
        for cells in body:
            print("| " + " | ".join(cells) + " |")
        print("\nGiB per device; activations and peaks are estimates (jaxbiqa.plan).")
        return
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    for cells in [header, *body]:
        padded = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        print("  ".join(padded))


def run(args: argparse.Namespace) -> int:
    try:
        rows = _build(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"jaxbiqa plan: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    elif len(rows) == 1 and not args.markdown:
        _print_breakdown(rows[0])
    else:
        _print_table(rows, args.markdown)
    return 1 if args.check and any(row["fits"] is False for row in rows) else 0
