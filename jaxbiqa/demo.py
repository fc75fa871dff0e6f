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
4. evaluation: the run's latest checkpoint restored and evaluated (`jaxbiqa.eval.evaluate`) on two
   sets, each labelled for what it shows: (a) in-distribution, the recipe's `data.eval_split`
   (`seen`: new crops and distortion draws of the training photos, images never trained on): the
   learning check; (b) unseen photos (`test`): generalisation to new content, reported without a
   target. Per image: the image-conditioned rating, the rating from the model's own caption alone
   and from caption + reasoning; reused when done for the same step and decoding;
5. report: `report/report.md` and `report/report.html` (`jaxbiqa.eval.report`) with the metric
   tables of both sets, plots, sample completions and the training curves, and `demo_summary.json`
   with the headline figures, the warm start's figures beside GRPO's, whether they meet the demo's
   targets (on set (a)), and the wall time of each stage.
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

from jaxbiqa.paths import atomic_write

DEMO_CONFIG = "demo_cpu"
DEFAULT_OUT = Path("runs") / "demo"
EVAL_DIR = "eval"
REPORT_DIR = "report"
SUMMARY = "demo_summary.json"
TRAIN_LOG = "train_log.jsonl"
UNSEEN_SPLIT = "test"  # set (b): the synthetic set's held-out photos
# dataset labels of the two sets in the combined predictions and the report
SETS = {"in_distribution": "(a) in-distribution: new crops of the training photos",
        "unseen_photos": "(b) unseen photos: generalisation, no target"}
TARGET_IMAGE_SRCC = 0.7    # set (a), image-conditioned, after GRPO
TARGET_CAPTION_SRCC = 0.6  # set (a), from the model's own caption alone, after GRPO

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
    from jaxbiqa.rl.trainer import SUMMARY_FILE, Trainer

    summary = Path(config.output_dir) / SUMMARY_FILE
    if summary.is_file():
        print(f"training already finished ({summary}): skipped", file=sys.stderr)
        return json.loads(summary.read_text())
    # the demo evaluates the restored checkpoint itself, so the trainer's final evaluation is left out
    section = dataclasses.replace(config.train, eval_at_end=False, progress=progress)
    result = Trainer.from_runtime(config, train=section).run(resume=True)
    if result.preempted:
        raise KeyboardInterrupt(f"training stopped at step {result.step}; run `jaxbiqa demo` again to resume")
    return json.loads(summary.read_text()) if summary.is_file() else {"step": result.step}


def evaluate_run(out_dir: Path, decoding: str, progress: bool, split: str) -> tuple[Path, dict]:
    """Evaluate the run's latest checkpoint on `split` of its eval data (reused when already done
    for that step)."""
    from jaxbiqa.eval.policy import find_checkpoint, load_policy
    from jaxbiqa.config import eval_settings
    from jaxbiqa.data.records import SkipReport
    from jaxbiqa.eval.evaluate import METRICS_FILE, count_records, eval_pipeline, evaluate

    folder = out_dir / EVAL_DIR / f"demo_{decoding}" / split
    done = folder / METRICS_FILE
    if done.is_file():
        _, directory, _ = find_checkpoint(out_dir)
        latest = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        metrics = json.loads(done.read_text())
        if metrics.get("checkpoint", {}).get("step") == latest and metrics["settings"]["decoding"] == decoding:
            print(f"evaluation of step {latest} on {split} already in {folder}: reused", file=sys.stderr)
            return folder, metrics
    policy = load_policy(str(out_dir), None)
    data = dataclasses.replace(policy.config.data, eval_split=split)
    settings = eval_settings(policy.config, decoding=decoding, progress=progress)
    skipped = SkipReport()
    result = evaluate(policy.model, policy.processor, eval_pipeline(data, policy.processor, skipped=skipped), folder,
                      rollout=policy.config.rollout, settings=settings, total=count_records(data),
                      extra={"checkpoint": policy.source, "eval": list(data.eval), "eval_split": split},
                      skipped=skipped)
    return folder, result.metrics


def evaluate_sets(config, out_dir: Path, decoding: str, progress: bool) -> dict[str, tuple[Path, dict]]:
    """Set label -> (evaluation folder, metrics) for set (a), the recipe's eval split, and set (b)."""
    splits = {"in_distribution": config.data.eval_split, "unseen_photos": UNSEEN_SPLIT}
    return {label: evaluate_run(out_dir, decoding, progress, split) for label, split in splits.items()}


def combine_predictions(sets: dict[str, tuple[Path, dict]], out: Path) -> Path:
    """One predictions file of both sets, each row's dataset renamed to its set's label, so that one
    report shows them side by side."""
    from jaxbiqa.eval.evaluate import PREDICTIONS_FILE

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as combined:
        for label, (folder, _) in sets.items():
            for line in (folder / PREDICTIONS_FILE).read_text().splitlines():
                combined.write(json.dumps({**json.loads(line), "dataset": label}) + "\n")
    return out


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


def headline(sets: dict[str, tuple[Path, dict]], report_metrics: dict, warm_start: dict | None) -> dict[str, Any]:
    """The figures the demo shows for both sets, the warm start's beside GRPO's on set (a), and
    whether they meet the targets (set (a) only)."""
    from jaxbiqa.eval.evaluate import PREDICTIONS_FILE

    figures: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for label, (folder, metrics) in sets.items():
        [(dataset, entry)] = metrics["datasets"].items()  # the synthetic set
        columns = entry["columns"]
        figures[label] = {column: {k: columns[column][k] for k in ("n", "n_invalid", "srcc", "plcc")}
                          for column in columns}
        if "caption_score" in columns:
            figures[label]["caption_score"]["srcc_p_value"] = _p_value(folder / PREDICTIONS_FILE, dataset,
                                                                       "caption_score")
        extras[label] = {"gap": entry["gap"], **({"rouge1": entry["alignment"]} if "alignment" in entry else {})}
    training = report_metrics.get("training", {})
    rewards = {k: v for k, v in training.items() if k.startswith("reward/") and not k.endswith("_std")}
    seen = figures.get("in_distribution", {})
    image, caption = seen.get("overall_score", {}), seen.get("caption_score", {})
    warm = {key: (warm_start or {}).get(key, {}).get("srcc") for key in ("image", "caption")}
    score = rewards.get("reward/score") or {}
    gains = {"image_srcc": None if warm["image"] is None or image.get("srcc") is None
             else image["srcc"] - warm["image"],
             "score_reward": None if not score else score["last"] - score["first"]}

    def at_least(value, bound):
        return value is not None and value >= bound

    targets = {
        f"(a) image SRCC >= {TARGET_IMAGE_SRCC}": at_least(image.get("srcc"), TARGET_IMAGE_SRCC),
        f"(a) caption-only SRCC >= {TARGET_CAPTION_SRCC}": at_least(caption.get("srcc"), TARGET_CAPTION_SRCC),
        "GRPO beats the warm start (a: image SRCC, or mean score reward)":
            any(gain is not None and gain > 0 for gain in gains.values()),
        "every pass-1 completion parses": all(columns.get("overall_score", {}).get("n_invalid") == 0
                                              for columns in figures.values()),
    }
    return {"figures": figures, "warm_start": warm, "grpo_gains": gains, "consistency": extras,
            "rewards": rewards, "targets": targets}


def write_report(out_dir: Path, sets: dict[str, tuple[Path, dict]]) -> tuple[Path, Path, dict]:
    """(report.md, report.html, the report's metrics): built from both sets' evaluations and the
    training log, or reused when newer than all of them."""
    from jaxbiqa.eval.evaluate import HUMAN_FILE, METRICS_FILE
    from jaxbiqa.eval.report import build_report

    folder = out_dir / REPORT_DIR
    markdown, html, metrics = folder / "report.md", folder / "report.html", folder / "metrics.json"
    log_file = out_dir / TRAIN_LOG
    sources = [p for p in (*(f / METRICS_FILE for f, _ in sets.values()), log_file) if p.is_file()]
    if all(p.is_file() for p in (markdown, html, metrics)) and \
            metrics.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        print(f"report up to date in {folder}: reused", file=sys.stderr)
        return markdown, html, json.loads(metrics.read_text())
    human = sets["in_distribution"][0] / HUMAN_FILE
    predictions = combine_predictions(sets, folder / "predictions.jsonl")
    built = build_report(predictions, folder, training_log=log_file if log_file.is_file() else None,
                         human=human if human.is_file() else None, html=True,
                         title="jaxbiqa demo: " + "; ".join(f"{k} = {v}" for k, v in SETS.items()),
                         skipped_records={label: found.get("skipped_records", 0) for label, (_, found) in sets.items()})
    return built.markdown, built.html, built.metrics


def run_demo(out_dir: Path = DEFAULT_OUT, *, config_name: str = DEMO_CONFIG, overrides: tuple[str, ...] = (),
             decoding: str = "greedy", progress: bool = True) -> DemoResult:
    """All five stages (see the module doc); returns where the report is and the summary."""
    from jaxbiqa.config import load_config
    from jaxbiqa.demo_assets import resolve_demo_model

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
    config = timed("model", resolve_demo_model, config)
    run_summary = timed("training", train, config, progress)
    sets = timed("evaluation", evaluate_sets, config, Path(out_dir), decoding, progress)
    markdown, html, report_metrics = timed("report", write_report, Path(out_dir), sets)
    timings["total"] = round(time.perf_counter() - start, 2)
    warm_start = (run_summary.get("eval") or {}).get("sft")
    summary = {**headline(sets, report_metrics, warm_start), "decoding": decoding,
               "checkpoint": sets["in_distribution"][1].get("checkpoint"), "training": run_summary,
               "wall_time_s": timings, "report": str(markdown), "html": str(html)}
    atomic_write(Path(out_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return DemoResult(Path(out_dir), markdown, summary)


def format_summary(result: DemoResult) -> str:
    def fmt(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    lines = [f"jaxbiqa demo: report {result.report} (and {result.summary['html']})"]
    labels = {"overall_score": "image", "caption_score": "caption only", "reasoning_score": "caption+think"}
    for name, columns in result.summary["figures"].items():
        lines.append(f"{SETS[name]} ({result.summary['decoding']} decoding):")
        for column, m in columns.items():
            lines.append(f"  {labels[column]:<14} SRCC {fmt(m['srcc'])}  PLCC {fmt(m['plcc'])}  "
                         f"(N {m['n']}, unparsable {m['n_invalid']})")
    warm = result.summary["warm_start"]
    lines.append(f"  (a) after the warm start alone: image SRCC {fmt(warm['image'])}, caption only SRCC "
                 f"{fmt(warm['caption'])}; GRPO's gain: image SRCC {fmt(result.summary['grpo_gains']['image_srcc'])}, "
                 f"mean score reward {fmt(result.summary['grpo_gains']['score_reward'])}")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax reports every checkpoint operation at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'" on CPU
    if args.restart and args.out.exists():
        shutil.rmtree(args.out)
    try:
        result = run_demo(args.out, config_name=args.config, overrides=tuple(args.overrides),
                          decoding=args.decoding, progress=not args.no_progress)
    except KeyboardInterrupt as err:
        print(f"jaxbiqa demo: interrupted: {err or 'run `jaxbiqa demo` again to resume'}", file=sys.stderr)
        return 130
    print(format_summary(result))
    return 0
