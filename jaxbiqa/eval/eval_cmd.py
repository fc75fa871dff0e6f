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
import time

from etils import epath

from jaxbiqa.config import Config, EvalSection, eval_settings
from jaxbiqa.config_cmd import add_config_arguments
from jaxbiqa.data.records import SkipReport
from jaxbiqa.demo_assets import resolve_demo_model
from jaxbiqa.eval.policy import CHECKPOINTS_DIR, Policy, load_policy
from jaxbiqa.eval.predictions_cmd import format_table
from jaxbiqa.paths import as_path


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--config / --set, --checkpoint and --step (shared with `jaxbiqa score`)."""
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="Hugging Face folder, jaxbiqa run directory, orbax checkpoint directory or step folder "
                             "(default: the config's model.path)")
    parser.add_argument("--step", type=int, default=None, help="the orbax checkpoint step (default: the latest)")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags over the config's `eval` section (left out: the config's value)."""
    parser.add_argument("--decoding", choices=("sampled", "greedy"), default=None,
                        help="sampled: the authors' T=1, top-k 50, top-p 0.95; greedy: argmax (default: eval.decoding, "
                             "sampled unless the recipe says otherwise)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: eval.seed, 42 as the authors)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per compiled batch (default: eval.batch_size, else data.global_batch_size)")
    parser.add_argument("--single-pass", action="store_true", help="pass 1 only: no caption-conditioned ratings")
    parser.add_argument("--strict-parse", action="store_true", help="read ratings with the authors' strict regex")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--mode", choices=("generate", "qalign"), default="generate",
                        help="generate: caption, reasoning and rating, two passes (default); qalign: one-pass "
                             "probability scoring over the five quality words")
    add_decoding_arguments(parser)
    parser.add_argument("--max-examples", type=int, default=None,
                        help="evaluate the first N records only (0: all; default: eval.max_examples)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <run directory or output_dir>/eval/<mode>[_<decoding>])")
    parser.add_argument("--lower-is-better", nargs="+", default=None, metavar="DATASET",
                        help="DMOS datasets besides those named like 'csiq' (target negated; default: "
                             "eval.lower_is_better)")
    parser.add_argument("--on-invalid", choices=("drop", "fill"), default=None,
                        help="unparsable ratings: drop them or fill with -1 as the authors (default: eval.on_invalid, "
                             "drop)")


def settings_from_args(args: argparse.Namespace, config: Config) -> EvalSection:
    """The config's `eval` section with the flags given on top, its batch size resolved."""
    given = {name: getattr(args, name, None) for name in ("decoding", "seed", "batch_size", "max_examples",
                                                           "on_invalid", "lower_is_better")}
    given |= {"two_pass": False if args.single_pass else None, "strict_parse": True if args.strict_parse else None}
    if given["lower_is_better"] is not None:
        given["lower_is_better"] = tuple(given["lower_is_better"])
    return eval_settings(config, **{k: v for k, v in given.items() if v is not None}, progress=not args.no_progress)


def default_out(policy: Policy, mode: str, decoding: str) -> epath.Path:
    source = policy.source
    if source["kind"] == "orbax":
        directory = as_path(source["path"])
        base = directory.parent if directory.name == CHECKPOINTS_DIR else directory
        name = f"{mode}_{decoding}_step{source['step']}" if mode == "generate" else f"{mode}_step{source['step']}"
    else:
        base = as_path(policy.config.output_dir)
        name = f"{mode}_{decoding}" if mode == "generate" else mode
    return base / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run(args: argparse.Namespace) -> int:
    from jaxbiqa.eval.evaluate import count_records, eval_pipeline, evaluate, evaluate_qalign

    policy = load_policy(args.checkpoint, args.config, args.overrides, step=args.step, prepare=resolve_demo_model)
    config = policy.config
    settings = settings_from_args(args, config)
    data = dataclasses.replace(config.data, global_batch_size=settings.batch_size)
    out = args.out or default_out(policy, args.mode, settings.decoding)
    total = count_records(data)
    start = time.perf_counter()
    extra = {"checkpoint": policy.source, "eval": list(data.eval), "eval_split": data.eval_split}
    skipped = SkipReport()
    if args.mode == "generate":
        result = evaluate(policy.model, policy.processor, eval_pipeline(data, policy.processor, skipped=skipped), out,
                          rollout=config.rollout, settings=settings, total=total, extra=extra, skipped=skipped)
    else:
        result = evaluate_qalign(policy.model, policy.processor, eval_pipeline(data, skipped=skipped), out,
                                 settings=settings, total=total, extra=extra, skipped=skipped)
    print(format_table(args.mode, str(result.predictions), result.metrics["datasets"], logistic=True))
    print(f"{result.n} images in {time.perf_counter() - start:.1f} s"
          + (f" ({len(skipped)} bad records skipped)" if len(skipped) else "")
          + f"; predictions: {result.predictions}; metrics: {result.metrics_file}")
    return 0
