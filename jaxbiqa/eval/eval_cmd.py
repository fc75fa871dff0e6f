"""`jaxbiqa eval`: evaluate a checkpoint on the config's eval datasets (jitted, batched).

  jaxbiqa eval [--config RECIPE] [--set key=value ...] [--checkpoint PATH] [--mode generate|qalign]
               [--decoding sampled|greedy] [--out DIR]

PATH is one of
* a Hugging Face Qwen2.5-VL folder (config.json + safetensors, e.g. a run's exported `policy/`):
  the weights are loaded; the rest of the setup comes from --config;
* a jaxbiqa run directory (its `checkpoints/`), an orbax checkpoint directory, or one step's
  folder in it: the parameters of the latest (or --step) checkpoint are restored with
  `jaxbiqa.checkpoint`; the model is rebuilt from the config saved with the checkpoint, which is
  also the whole config when --config is not given (--set overrides apply on top either way).
Without --checkpoint, `model.path` of the config is evaluated.

`--mode generate` (default) runs the two-pass rollout (`jaxbiqa.eval.evaluate`): pass-1 rating,
caption-only and caption+think ratings, texts; `--mode qalign` the one-pass probability scoring
(`jaxbiqa.eval.qalign`). The output folder gets `predictions.jsonl` (readable by `jaxbiqa
eval-predictions`), `human.json` when the data has human texts, and `metrics.json`; the metrics
table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from jaxbiqa.config import Config, ConfigError, apply_override, from_dict, load_config
from jaxbiqa.config_cmd import add_config_arguments

CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG = "config.json"  # the resolved config a training run writes into its output directory


class Policy(NamedTuple):
    model: Any          # the nnx model
    processor: Any      # jaxbiqa.processing.Processor
    config: Config      # the config to evaluate with
    source: dict        # what was loaded: kind, path, step


class CheckpointError(ValueError):
    """A --checkpoint path that cannot be loaded; the message says what was expected."""


def _is_step_dir(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit()


def _has_steps(path: Path) -> bool:
    return path.is_dir() and any(_is_step_dir(p) for p in path.iterdir())


def find_checkpoint(path: str | Path) -> tuple[str, Path, int | None]:
    """("hf", folder, None) or ("orbax", checkpoint directory, step or None) for a --checkpoint PATH."""
    from jaxbiqa.models.build import has_weights

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--checkpoint {path}: no such file or directory")
    if has_weights(path):
        return "hf", path, None
    if (path / CHECKPOINTS_DIR).is_dir():
        directory = path / CHECKPOINTS_DIR
        saved = path / RUN_CONFIG
        if saved.is_file():  # a run may keep its checkpoints elsewhere (checkpoint.directory)
            import json

            custom = json.loads(saved.read_text()).get("checkpoint", {}).get("directory")
            if custom:
                directory = Path(custom)
        if not _has_steps(directory):
            raise CheckpointError(f"--checkpoint {path}: the run has no checkpoint yet in {directory}")
        return "orbax", directory, None
    if _has_steps(path):
        return "orbax", path, None
    if _is_step_dir(path) and _has_steps(path.parent):
        return "orbax", path.parent, int(path.name)
    raise CheckpointError(
        f"--checkpoint {path}: not a Hugging Face checkpoint (config.json + model.safetensors), a jaxbiqa run "
        f"directory (with {CHECKPOINTS_DIR}/), an orbax checkpoint directory (numbered step folders) or one step's "
        f"folder")


def _with_overrides(config: Config, overrides: Sequence[str]) -> Config:
    for assignment in overrides:
        config = apply_override(config, assignment)
    return config


def _path_key(path: Sequence[Any]) -> str:
    """'a/b/0/c' from an nnx state path or an orbax key path (without the Variable's 'value' leaf)."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(names[:-1] if names and names[-1] == "value" else names)


def restore_parameters(directory: Path, step: int | None) -> tuple[int, dict[str, Any], dict | None]:
    """(step, {state path: host array}, saved config) of a training checkpoint written by the trainer:
    its train state's `params` and `frozen` parts together hold every variable of the model."""
    import jax

    from jaxbiqa.checkpoint import Checkpointer

    try:
        host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:  # no CPU backend: restore to the default device
        host = None
    checkpointer = Checkpointer(directory, max_to_keep=None, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None or step not in checkpointer.all_steps():
            raise CheckpointError(f"{directory}: no checkpoint for step {step} (have {checkpointer.all_steps()})")
        metadata = checkpointer.manager.item_metadata(step)["state"]
        # the whole saved tree is restored (orbax's standard handler restores no subtree alone), on the host
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), metadata)
        restored = checkpointer.restore(target, step=step)
    finally:
        checkpointer.close()
    state = restored.state["train"] if "train" in restored.state else restored.state
    if not isinstance(state, dict) or "params" not in state or "frozen" not in state:
        raise CheckpointError(f"{directory}/{step}: not a jaxbiqa training checkpoint (expected a train state with "
                              f"params and frozen parts, found {sorted(state) if isinstance(state, dict) else state})")
    arrays = {}
    for part in ("params", "frozen"):
        for path, value in jax.tree_util.tree_flatten_with_path(state[part])[0]:
            arrays[_path_key(path)] = value
    return restored.step, arrays, restored.config


def fill_model(model, arrays: dict[str, Any], where: str):
    """Set every variable of `model` (abstract or not) from `arrays` (state path -> array)."""
    import jax.numpy as jnp
    from flax import nnx

    missing, wrong = [], []
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        key = _path_key(path)
        value = arrays.get(key)
        current = variable.get_value()
        if value is None:
            missing.append(key)
        elif tuple(value.shape) != tuple(current.shape):
            wrong.append(f"{key} {tuple(value.shape)} vs {tuple(current.shape)}")
        else:
            variable.set_value(jnp.asarray(value, current.dtype))
    if missing or wrong:
        problems = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else [])
        problems += [f"shape mismatch {', '.join(wrong[:5])}"] if wrong else []
        raise CheckpointError(f"{where}: the checkpoint does not fit the model built from its config: "
                              + "; ".join(problems))
    return model


def load_policy(checkpoint: str | None, config_name: str | None, overrides: Sequence[str] = (), *,
                step: int | None = None) -> Policy:
    """The model, processor and config to evaluate (see the module doc for PATH)."""
    from jaxbiqa.models.build import abstract_policy, build_policy, build_processor

    if checkpoint is None:
        config = load_config(config_name, overrides)
        model = build_policy(config.model, seed=config.seed)
        return Policy(model, build_processor(config.model, config.data), config,
                      {"kind": "config", "path": config.model.path})
    kind, path, found_step = find_checkpoint(checkpoint)
    if kind == "hf":
        if step is not None:
            raise CheckpointError(f"--step applies to orbax checkpoints; {path} is a Hugging Face folder")
        config = load_config(config_name)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(path)))
        config = _with_overrides(config, overrides)
        model = build_policy(config.model, seed=config.seed)
        return Policy(model, build_processor(config.model, config.data), config, {"kind": "hf", "path": str(path)})
    step = found_step if step is None else step
    restored_step, arrays, saved = restore_parameters(path, step)
    if saved is None and config_name is None:
        raise CheckpointError(f"{path}: the checkpoint carries no config; pass the run's --config")
    saved_config = from_dict(Config, saved, "saved config") if saved is not None else None
    config = load_config(config_name) if config_name else saved_config
    if saved_config is not None:
        config = dataclasses.replace(config, model=saved_config.model)
    config = _with_overrides(config, overrides)
    model = fill_model(abstract_policy(config.model, seed=config.seed), arrays, f"{path} step {restored_step}")
    return Policy(model, build_processor(config.model, config.data), config,
                  {"kind": "orbax", "path": str(path), "step": restored_step})


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--config / --set, --checkpoint and --step (shared with `jaxbiqa score`)."""
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="Hugging Face folder, jaxbiqa run directory, orbax checkpoint directory or step folder "
                             "(default: the config's model.path)")
    parser.add_argument("--step", type=int, default=None, help="the orbax checkpoint step (default: the latest)")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxbiqa.eval.evaluate import EvalSettings

    defaults = EvalSettings()
    parser.add_argument("--decoding", choices=("sampled", "greedy"), default=defaults.decoding,
                        help="sampled: the authors' T=1, top-k 50, top-p 0.95 (default); greedy: argmax")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed (default: 42, the authors')")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="images per compiled batch (default: data.global_batch_size)")
    parser.add_argument("--single-pass", action="store_true", help="pass 1 only: no caption-conditioned ratings")
    parser.add_argument("--strict-parse", action="store_true", help="read ratings with the authors' strict regex")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--mode", choices=("generate", "qalign"), default="generate",
                        help="generate: caption, reasoning and rating, two passes (default); qalign: one-pass "
                             "probability scoring over the five quality words")
    add_decoding_arguments(parser)
    parser.add_argument("--max-examples", type=int, default=0, help="evaluate the first N records only (0: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run directory or output_dir>/eval/<mode>[_<decoding>])")
    parser.add_argument("--lower-is-better", nargs="+", default=[], metavar="DATASET",
                        help="DMOS datasets besides those named like 'csiq' (target negated)")
    parser.add_argument("--on-invalid", choices=("drop", "fill"), default="drop",
                        help="unparsable ratings: drop them (default) or fill with -1 as the authors")


def settings_from_args(args: argparse.Namespace, config: Config, **changes) -> Any:
    from jaxbiqa.eval.evaluate import EvalSettings

    return EvalSettings(decoding=args.decoding, seed=args.seed,
                        batch_size=args.batch_size or config.data.global_batch_size,
                        two_pass=not args.single_pass, strict_parse=args.strict_parse,
                        progress=not args.no_progress, **changes)


def default_out(policy: Policy, mode: str, decoding: str) -> Path:
    source = policy.source
    if source["kind"] == "orbax":
        directory = Path(source["path"])
        base = directory.parent if directory.name == CHECKPOINTS_DIR else directory
        name = f"{mode}_{decoding}_step{source['step']}" if mode == "generate" else f"{mode}_step{source['step']}"
    else:
        base = Path(policy.config.output_dir)
        name = f"{mode}_{decoding}" if mode == "generate" else mode
    return base / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run(args: argparse.Namespace) -> int:
    from jaxbiqa.eval.evaluate import count_records, eval_pipeline, evaluate, evaluate_qalign
    from jaxbiqa.eval.predictions_cmd import format_table

    try:
        policy = load_policy(args.checkpoint, args.config, args.overrides, step=args.step)
        config = policy.config
        settings = settings_from_args(args, config, max_examples=args.max_examples,
                                      lower_is_better=tuple(args.lower_is_better), on_invalid=args.on_invalid)
        data = dataclasses.replace(config.data, global_batch_size=settings.batch_size)
        out = args.out or default_out(policy, args.mode, settings.decoding)
        total = count_records(data)
        start = time.perf_counter()
        extra = {"checkpoint": policy.source, "eval": list(data.eval), "eval_split": data.eval_split}
        if args.mode == "generate":
            result = evaluate(policy.model, policy.processor, eval_pipeline(data, policy.processor), out,
                              rollout=config.rollout, settings=settings, total=total, extra=extra)
        else:
            result = evaluate_qalign(policy.model, policy.processor, eval_pipeline(data), out, settings=settings,
                                     total=total, extra=extra)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as err:
        print(f"jaxbiqa eval: error: {err}", file=sys.stderr)
        return 1
    print(format_table(args.mode, str(result.predictions), result.metrics["datasets"], logistic=True))
    print(f"{result.n} images in {time.perf_counter() - start:.1f} s; predictions: {result.predictions}; "
          f"metrics: {result.metrics_file}")
    return 0
