"""`jaxbiqa demo`: the whole method end to end, offline, on CPU, into `runs/demo/`.

  jaxbiqa demo [--out runs/demo] [--decoding greedy|sampled] [--set key=value ...] [--restart]

1. data: the synthetic distortion set made from photographs shipped in scikit-image and
   scikit-learn (`jaxbiqa.data.synthetic`), written where the recipe's `data.train` / `data.eval`
   specs point; reused when it is there;
2. model: the demo tokenizer (a byte-level BPE trained offline in a second) and a tiny
   Qwen2.5-VL config (`jaxbiqa.demo_assets`), trained from scratch;
3. training: the `demo_cpu` recipe run in this process as `jaxbiqa train --config demo_cpu` runs it,
   supervised warm start then two-pass GRPO; an interrupted run resumes from its latest
   checkpoint, a finished one (its `summary.json` exists) is not trained again;
4. evaluation: the run's latest checkpoint restored and evaluated on the synthetic test split
   (`jaxbiqa.eval.evaluate`): the image-conditioned rating, the rating from the model's own
   caption alone and from caption + reasoning; reused when done for the same step and decoding;
5. report: `report/report.md` and `report/report.html` (`jaxbiqa.eval.report`) with the metric
   tables, plots, sample completions and the training curves, and `demo_summary.json` with the
   headline figures, whether they meet the demo's targets, and the wall time of each stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

DEMO_CONFIG = "demo_cpu"
DEFAULT_OUT = Path("runs") / "demo"
EVAL_DIR = "eval"
REPORT_DIR = "report"
SUMMARY = "demo_summary.json"
TRAIN_LOG = "train_log.jsonl"
TARGET_CORRELATION = 0.75  # held-out SRCC and PLCC of the image-conditioned rating
CHANCE_P_VALUE = 0.05  # the caption-conditioned SRCC must differ from 0 at this level

log = logging.getLogger("jaxbiqa.demo")


@dataclasses.dataclass
class DemoResult:
    out_dir: Path
    report: Path
    summary: dict[str, Any]


def _stage(name: str) -> None:
    print(f"\n== jaxbiqa demo: {name}", file=sys.stderr, flush=True)


def prepare_data(config) -> list[str]:
    """Generate the synthetic sets the recipe reads (each once); returns their folders."""
    from jaxbiqa.data.pipeline import ensure_synthetic

    folders = []
    for spec in dict.fromkeys((*config.data.train, *config.data.eval)):
        kind, _, path = spec.partition(":")
        if kind == "synthetic":
            ensure_synthetic(path, config.data)
            folders.append(path)
    return folders


def train(config, progress: bool = True) -> dict[str, Any]:
    """Run (or resume, or skip when finished) the recipe's training; returns the run's summary."""
    from jaxbiqa.rl.trainer import SUMMARY_FILE, Trainer, train_section

    summary = Path(config.output_dir) / SUMMARY_FILE
    if summary.is_file():
        print(f"training already finished ({summary}): skipped", file=sys.stderr)
        return json.loads(summary.read_text())
    # the demo evaluates the restored checkpoint itself, so the trainer's final evaluation is left out
    section = dataclasses.replace(train_section(config), eval_at_end=False, progress=progress)
    result = Trainer.from_runtime(config, train=section).run(resume=True)
    if result.preempted:
        raise KeyboardInterrupt(f"training stopped at step {result.step}; run `jaxbiqa demo` again to resume")
    return json.loads(summary.read_text()) if summary.is_file() else {"step": result.step}


def evaluate_run(out_dir: Path, decoding: str, progress: bool) -> tuple[Path, dict]:
    """Evaluate the run's latest checkpoint on its eval split (reused when already done for that step)."""
    from jaxbiqa.eval.eval_cmd import find_checkpoint, load_policy
    from jaxbiqa.eval.evaluate import METRICS_FILE, EvalSettings, count_records, eval_pipeline, evaluate

    folder = out_dir / EVAL_DIR / f"demo_{decoding}"
    done = folder / METRICS_FILE
    if done.is_file():
        _, directory, _ = find_checkpoint(out_dir)
        latest = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        metrics = json.loads(done.read_text())
        if metrics.get("checkpoint", {}).get("step") == latest and metrics["settings"]["decoding"] == decoding:
            print(f"evaluation of step {latest} already in {folder}: reused", file=sys.stderr)
            return folder, metrics
    policy = load_policy(str(out_dir), None)
    config = policy.config
    settings = EvalSettings(decoding=decoding, batch_size=config.data.global_batch_size, progress=progress)
    result = evaluate(policy.model, policy.processor, eval_pipeline(config.data, policy.processor), folder,
                      rollout=config.rollout, settings=settings, total=count_records(config.data),
                      extra={"checkpoint": policy.source, "eval": list(config.data.eval),
                             "eval_split": config.data.eval_split})
    return folder, result.metrics


def _p_value(predictions: Path, dataset: str, column: str) -> float | None:
    """Two-sided p-value of the SRCC of one column (invalid predictions dropped); None when undefined."""
    import numpy as np
    from scipy import stats

    from jaxbiqa.eval.predictions import load_predictions

    data = load_predictions(predictions)[dataset].columns.get(column)
    if data is None:
        return None
    keep = np.isfinite(data.pred)
    if keep.sum() < 3 or np.ptp(data.pred[keep]) == 0:
        return None
    return float(stats.spearmanr(data.pred[keep], data.gt[keep]).pvalue)


def headline(metrics: dict, report_metrics: dict, predictions: Path) -> dict[str, Any]:
    """The figures the demo shows and whether they meet its targets."""
    figures: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for name, entry in metrics["datasets"].items():
        columns = entry["columns"]
        figures[name] = {column: {k: columns[column][k] for k in ("n", "n_invalid", "srcc", "plcc")}
                         for column in columns}
        if "caption_score" in columns:
            figures[name]["caption_score"]["srcc_p_value"] = _p_value(predictions, name, "caption_score")
        extras[name] = {"gap": entry["gap"], **({"rouge1": entry["alignment"]} if "alignment" in entry else {})}
    training = report_metrics.get("training", {})
    rewards = {k: v for k, v in training.items() if k.startswith("reward/") and not k.endswith("_std")}
    image = next(iter(figures.values()), {}).get("overall_score", {})
    caption = next(iter(figures.values()), {}).get("caption_score", {})
    total = training.get("reward/total_mean")
    p_caption = caption.get("srcc_p_value")

    def at_least(value, bound):
        return value is not None and value >= bound

    targets = {
        f"image SRCC >= {TARGET_CORRELATION}": at_least(image.get("srcc"), TARGET_CORRELATION),
        f"image PLCC >= {TARGET_CORRELATION}": at_least(image.get("plcc"), TARGET_CORRELATION),
        "caption-only SRCC > 0 (p < 0.05)": bool(caption.get("srcc") is not None and caption["srcc"] > 0
                                                  and p_caption is not None and p_caption < CHANCE_P_VALUE),
        "total reward rises": bool(total and total["last"] > total["first"]),
    }
    return {"figures": figures, "consistency": extras, "rewards": rewards, "targets": targets}


def write_report(out_dir: Path, eval_dir: Path) -> tuple[Path, Path, dict]:
    """(report.md, report.html, the report's metrics): built from the evaluation and the training log,
    or reused when newer than both."""
    from jaxbiqa.eval.evaluate import HUMAN_FILE, METRICS_FILE, PREDICTIONS_FILE
    from jaxbiqa.eval.report import build_report

    folder = out_dir / REPORT_DIR
    markdown, html, metrics = folder / "report.md", folder / "report.html", folder / "metrics.json"
    log_file = out_dir / TRAIN_LOG
    sources = [p for p in (eval_dir / METRICS_FILE, log_file) if p.is_file()]
    if all(p.is_file() for p in (markdown, html, metrics)) and \
            metrics.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        print(f"report up to date in {folder}: reused", file=sys.stderr)
        return markdown, html, json.loads(metrics.read_text())
    human = eval_dir / HUMAN_FILE
    built = build_report(eval_dir / PREDICTIONS_FILE, folder, training_log=log_file if log_file.is_file() else None,
                         human=human if human.is_file() else None, html=True, title="jaxbiqa demo")
    return built.markdown, built.html, built.metrics


def run_demo(out_dir: Path = DEFAULT_OUT, *, config_name: str = DEMO_CONFIG, overrides: tuple[str, ...] = (),
             decoding: str = "greedy", progress: bool = True) -> DemoResult:
    """All five stages (see the module doc); returns where the report is and the summary."""
    from jaxbiqa.config import load_config
    from jaxbiqa.models.build import resolve_model_path

    start = time.perf_counter()
    timings: dict[str, float] = {}
    config = load_config(config_name, [f"output_dir={out_dir}", *overrides])

    def timed(name: str, fn, *args):
        _stage(name)
        t0 = time.perf_counter()
        value = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 2)
        return value

    timed("data", prepare_data, config)
    timed("model", resolve_model_path, config.model.path)
    run_summary = timed("training", train, config, progress)
    eval_dir, metrics = timed("evaluation", evaluate_run, Path(out_dir), decoding, progress)
    markdown, html, report_metrics = timed("report", write_report, Path(out_dir), eval_dir)
    timings["total"] = round(time.perf_counter() - start, 2)
    summary = {**headline(metrics, report_metrics, eval_dir / "predictions.jsonl"), "decoding": decoding,
               "checkpoint": metrics.get("checkpoint"), "training": run_summary, "wall_time_s": timings,
               "report": str(markdown), "html": str(html)}
    (Path(out_dir) / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(Path(out_dir), markdown, summary)


def format_summary(result: DemoResult) -> str:
    def fmt(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    lines = [f"jaxbiqa demo: report {result.report} (and {result.summary['html']})"]
    for name, columns in result.summary["figures"].items():
        lines.append(f"held-out {name} test split ({result.summary['decoding']} decoding):")
        for column, m in columns.items():
            label = {"overall_score": "image", "caption_score": "caption only",
                     "reasoning_score": "caption+think"}[column]
            lines.append(f"  {label:<14} SRCC {fmt(m['srcc'])}  PLCC {fmt(m['plcc'])}  "
                         f"(N {m['n']}, unparsable {m['n_invalid']})")
    warm = (result.summary.get("training") or {}).get("eval", {}).get("sft")
    if warm:
        parts = [f"{label} SRCC {fmt(warm[key]['srcc'])} PLCC {fmt(warm[key]['plcc'])}"
                 for key, label in (("image", "image"), ("caption", "caption only")) if key in warm]
        lines.append("  after the warm start alone (the trainer's greedy evaluation): " + "; ".join(parts))
    for name, values in result.summary["rewards"].items():
        lines.append(f"  {name}: {fmt(values['first'])} -> {fmt(values['last'])} (first / last 10% of steps)")
    lines += [f"  target {'met' if ok else 'MISSED'}: {what}" for what, ok in result.summary["targets"].items()]
    times = result.summary["wall_time_s"]
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--config", default=DEMO_CONFIG, help=f"recipe (default: {DEMO_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (repeatable), e.g. --set sft.steps=50")
    parser.add_argument("--decoding", choices=("greedy", "sampled"), default="greedy",
                        help="evaluation decoding: greedy (default) or the authors' sampling (T=1, top-k 50, "
                             "top-p 0.95, seed 42)")
    parser.add_argument("--restart", action="store_true", help="delete the output folder first and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from jaxbiqa.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax reports every checkpoint operation at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'" on CPU
    if args.restart and args.out.exists():
        shutil.rmtree(args.out)
    try:
        result = run_demo(args.out, config_name=args.config, overrides=tuple(args.overrides),
                          decoding=args.decoding, progress=not args.no_progress)
    except ConfigError as err:
        print(f"jaxbiqa demo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"jaxbiqa demo: interrupted: {err or 'run `jaxbiqa demo` again to resume'}", file=sys.stderr)
        return 130
    print(format_summary(result))
    return 0
