"""`jaxbiqa eval-predictions`: metric tables for prediction files (released layout or jaxbiqa JSON lines).

For every PATH (a model folder, a dataset folder or a single file; see `jaxbiqa.eval.predictions`)
and every dataset in it, one row per score column: image (`overall_score`), caption+think
(`reasoning_score`), caption only (`caption_score`), with N, invalid predictions, PLCC, SRCC, KRCC,
RMSE and, with --logistic, PLCC and RMSE after the VQEG logistic mapping; then the image-to-caption
gaps and, with --human, ROUGE-1 of the pass-1 captions against the human texts. Raw RMSE compares
the ratings with the target as given, so it means something only for targets on the 1-5 rating
scale (e.g. KonIQ's rescaled MOS); RMSE-L is on the target's own scale.

Lower-is-better datasets (DMOS) get their target negated so that correlations come out positive:
those named with --lower-is-better, and automatically any dataset whose name contains the word
"csiq" (split on non-alphanumerics, case-insensitive: csiq, CSIQ, csiq-test).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from jaxbiqa.eval.alignment import load_human_texts, rouge1_alignment
from jaxbiqa.eval.metrics import INVALID_SENTINEL, gap, iqa_metrics, is_lower_is_better
from jaxbiqa.eval.predictions import COLUMN_LABELS, json_safe, load_predictions
from jaxbiqa.paths import atomic_write



def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="model folder, dataset folder, .json shard or .jsonl file"
    )
    parser.add_argument("--human", type=Path, help="Q-Reasoning-style human texts (e.g. human_test.json) for ROUGE-1")
    parser.add_argument(
        "--json", type=Path, dest="json_out", metavar="OUT", help="also write every figure to this JSON file"
    )
    parser.add_argument(
        "--lower-is-better", nargs="+", action="extend", default=[], metavar="DATASET",
        help="datasets whose target is a DMOS (negated); 'csiq' is detected automatically. Put it after the PATHs",
    )
    parser.add_argument(
        "--on-invalid", choices=("drop", "fill"), default="drop",
        help="unparsable predictions (NaN or -1): drop them, or keep them as --fill-value (default: drop)",
    )
    parser.add_argument(
        "--fill-value", type=float, default=INVALID_SENTINEL,
        help="value for --on-invalid fill (default: -1, as the authors)",
    )
    parser.add_argument("--logistic", action="store_true", help="also PLCC / RMSE after the 4-parameter logistic fit")


def _labels(paths: list[str]) -> list[str]:
    names = [Path(p).name or p for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def evaluate_path(path: str, args: argparse.Namespace, human: dict[str, str] | None) -> dict:
    """Every figure for the datasets under one PATH, as a JSON-ready dict."""
    datasets = {}
    for name, data in load_predictions(path).items():
        lower = is_lower_is_better(name, args.lower_is_better)
        metrics = {
            column: iqa_metrics(
                col.pred, col.gt, lower_is_better=lower, on_invalid=args.on_invalid,
                fill_value=args.fill_value, logistic_fit=args.logistic,
            )
            for column, col in data.columns.items()
        }
        entry: dict = {
            "lower_is_better": lower,
            "columns": {column: m.as_dict() for column, m in metrics.items()},
            "gap": {},
            "notes": list(data.notes),
        }
        if "overall_score" in metrics:
            for column in ("reasoning_score", "caption_score"):
                if column in metrics:
                    entry["gap"][column] = gap(metrics["overall_score"], metrics[column])
        if human is not None:
            entry["alignment"] = rouge1_alignment(data.perception_texts, human).as_dict()
        datasets[name] = entry
    return datasets


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_table(label: str, path: str, datasets: dict, logistic: bool) -> str:
    header = ["score", "N", "invalid", "PLCC", "SRCC", "KRCC", "RMSE"] + (["PLCC-L", "RMSE-L"] if logistic else [])
    widths = [15, 6, 8] + [7] * (len(header) - 3)

    def line(cells: list[str]) -> str:
        return "  " + "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"== {label} ({path}) =="]
    for name, entry in datasets.items():
        out.append(f"{name}" + ("  (lower is better: target negated)" if entry["lower_is_better"] else ""))
        out.append(line(header))
        for column, m in entry["columns"].items():
            cells = [COLUMN_LABELS[column], str(m["n"]), str(m["n_invalid"])]
            cells += [_fmt(m[k]) for k in ("plcc", "srcc", "krcc", "rmse")]
            if logistic:
                cells += [_fmt(m["plcc_logistic"]), _fmt(m["rmse_logistic"])]
            out.append(line(cells))
        for column, g in entry["gap"].items():
            what = f"gap image - {COLUMN_LABELS[column]}:"
            out.append(f"  {what:<30}PLCC {_fmt(g['plcc'], True)}  SRCC {_fmt(g['srcc'], True)}")
        alignment = entry.get("alignment")
        if alignment and alignment["n"]:
            out.append(
                f"  ROUGE-1 caption vs human (N={alignment['n']}): P {_fmt(alignment['precision'])}  "
                f"R {_fmt(alignment['recall'])}  F {_fmt(alignment['f'])}"
                + (f"  ({alignment['n_no_caption']} without caption)" if alignment["n_no_caption"] else "")
            )
        notes = list(entry["notes"]) + [n for m in entry["columns"].values() for n in m["notes"]]
        out += [f"  note: {n}" for n in dict.fromkeys(notes)]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    human = load_human_texts(args.human) if args.human else None
    results = []
    for label, path in zip(_labels(args.paths), args.paths):
        datasets = evaluate_path(path, args, human)
        results.append({"label": label, "path": path, "datasets": datasets})
        print(format_table(label, path, datasets, args.logistic))
    if args.json_out:
        settings = {
            "on_invalid": args.on_invalid, "fill_value": args.fill_value, "logistic": args.logistic,
            "human": str(args.human) if args.human else None,
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json_out, json.dumps(json_safe({"settings": settings, "models": results}), indent=2) + "\n")
    return 0
