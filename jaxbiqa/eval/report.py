"""A self-contained evaluation report: metric tables, plots, sample completions, training curves.

`build_report(predictions, out_dir, ...)` reads a prediction file or folder (`jaxbiqa.eval.predictions`),
and writes into `out_dir`:

* ``report.md``: per dataset, the metrics of each score column (image, caption+think, caption
  only: N, invalid, PLCC, SRCC, KRCC, RMSE, and PLCC / RMSE after the logistic fit), the
  image-to-caption gaps, ROUGE-1 of the captions against human texts when `human` is given, the
  plots (relative links into ``plots/``) and a few pass-1 completions; then the training curves
  and their first / last values when `training_log` is given;
* ``plots/*.png`` (`jaxbiqa.eval.plots`);
* ``metrics.json``: every figure of the report, NaN as null;
* ``report.html`` with `html=True`: the same content, plots embedded as data URIs (one file).

Metrics follow `jaxbiqa eval-predictions`: invalid predictions dropped (or filled, `on_invalid`),
DMOS datasets (named in `lower_is_better`, or containing "csiq") with the target negated.
"""

from __future__ import annotations

import base64
import html as html_lib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxbiqa.eval.alignment import load_human_texts, rouge1_alignment
from jaxbiqa.eval.metrics import INVALID_SENTINEL, IQAMetrics, OnInvalid, gap, iqa_metrics, is_lower_is_better
from jaxbiqa.eval.predictions import COLUMN_LABELS, DatasetPredictions, json_safe, load_predictions
from jaxbiqa.paths import atomic_write

PLOTS_DIR = "plots"
METRIC_HEADER = ("score", "N", "invalid", "PLCC", "SRCC", "KRCC", "RMSE", "PLCC (logistic)", "RMSE (logistic)")
PASS2_COLUMNS = ("reasoning_score", "caption_score")


@dataclass(frozen=True)
class Report:
    markdown: Path
    metrics_json: Path
    plots: tuple[Path, ...]
    html: Path | None
    metrics: dict  # the content of metrics.json


# Blocks of the document, rendered to Markdown and HTML alike.
@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class _Image:
    alt: str
    path: str  # relative to the report


@dataclass(frozen=True)
class _Code:
    text: str


def num(value: float | None, signed: bool = False) -> str:
    """A figure as the report prints it: 3 decimals, "n/a" for None / NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def metric_row(label: str, m: IQAMetrics) -> list[str]:
    """One row of a dataset's metrics table (`METRIC_HEADER` order)."""
    return [label, str(m.n), str(m.n_invalid), num(m.plcc), num(m.srcc), num(m.krcc), num(m.rmse),
            num(m.plcc_logistic), num(m.rmse_logistic)]


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"
    slug, i = base, 1
    while slug in taken:
        i += 1
        slug = f"{base}_{i}"
    taken.add(slug)
    return slug


def _sample_images(data: DatasetPredictions, k: int) -> list[str]:
    """Up to k images with a pass-1 completion, spread evenly over the target's range (low to high)."""
    column = next(iter(data.columns.values()), None)
    if column is None or k <= 0:
        return []
    by_target = [column.images[i] for i in np.argsort(column.gt, kind="stable")]
    ranked = [image for image in by_target if image in data.perception_texts]
    if len(ranked) <= k:
        return ranked
    return [ranked[int(round(i))] for i in np.linspace(0, len(ranked) - 1, k)]


def _dataset_section(name: str, data: DatasetPredictions, slug: str, out_dir: Path, *, lower: bool,
                     on_invalid: OnInvalid, fill_value: float, human: dict[str, str] | None,
                     samples: int) -> tuple[list, dict, list[Path]]:
    from jaxbiqa.eval import plots  # matplotlib only when a report is drawn

    metrics = {column: iqa_metrics(col.pred, col.gt, lower_is_better=lower, on_invalid=on_invalid,
                                   fill_value=fill_value)
               for column, col in data.columns.items()}
    blocks: list = [_Heading(2, name)]
    if lower:
        blocks.append(_Para("Lower-is-better target (DMOS): negated before the correlations."))
    blocks.append(_Table(METRIC_HEADER, [metric_row(COLUMN_LABELS[c], m) for c, m in metrics.items()]))
    entry: dict = {"lower_is_better": lower, "columns": {c: m.as_dict() for c, m in metrics.items()},
                   "gap": {}, "notes": list(data.notes)}
    if "overall_score" in metrics:
        for column in PASS2_COLUMNS:
            if column in metrics:
                entry["gap"][column] = gap(metrics["overall_score"], metrics[column])
    if entry["gap"]:
        blocks.append(_Para("Image-to-caption gap (image-conditioned minus caption-conditioned; smaller is more "
                            "self-consistent):"))
        blocks.append(_Table(("gap", "PLCC", "SRCC"),
                             [[f"image - {COLUMN_LABELS[c]}", num(g["plcc"], True), num(g["srcc"], True)]
                              for c, g in entry["gap"].items()]))
    if human is not None:
        alignment = rouge1_alignment(data.perception_texts, human)
        entry["alignment"] = alignment.as_dict()
        if alignment.n:
            blocks.append(_Para("ROUGE-1 of the pass-1 captions against the human texts:"))
            blocks.append(_Table(("N", "precision", "recall", "F", "without caption"),
                                 [[str(alignment.n), num(alignment.precision), num(alignment.recall),
                                   num(alignment.f), str(alignment.n_no_caption)]]))
        else:
            blocks.append(_Para("ROUGE-1: no image of this dataset has a human text."))
    notes = list(data.notes) + [n for m in metrics.values() for n in m.notes]
    blocks += [_Para(f"Note: {n}") for n in dict.fromkeys(notes)]

    written = []
    target_label = "target (DMOS, lower is better)" if lower else "target (MOS)"
    fig = plots.prediction_figure({COLUMN_LABELS[c]: (col.pred, col.gt) for c, col in data.columns.items()},
                                  dataset=name, target_label=target_label, lower_is_better=lower)
    written.append(plots.save_png(fig, out_dir / PLOTS_DIR / f"{slug}_predictions.png"))
    blocks.append(_Image(f"{name}: predicted vs target", f"{PLOTS_DIR}/{written[-1].name}"))
    if "overall_score" in data.columns:
        image_col = data.columns["overall_score"]
        by_image = dict(zip(image_col.images, range(len(image_col.images))))
        for column in PASS2_COLUMNS:
            if column not in data.columns:
                continue
            other = data.columns[column]
            rows = [(by_image[im], j) for j, im in enumerate(other.images) if im in by_image]
            if not rows:
                continue
            i, j = (np.array(ix) for ix in zip(*rows))
            fig = plots.rating_figure(image_col.pred[i], other.pred[j], dataset=name,
                                      caption_label=COLUMN_LABELS[column], target=image_col.gt[i],
                                      target_label=target_label)
            written.append(plots.save_png(fig, out_dir / PLOTS_DIR / f"{slug}_image_vs_{column}.png"))
            blocks.append(_Image(f"{name}: image vs {COLUMN_LABELS[column]} rating",
                                 f"{PLOTS_DIR}/{written[-1].name}"))

    chosen = _sample_images(data, samples)
    if chosen:
        blocks.append(_Heading(3, f"{name}: sample completions"))
        header = ["file", "target"] + [COLUMN_LABELS[c] for c in data.columns]
        lookup = {c: dict(zip(col.images, col.pred)) for c, col in data.columns.items()}
        gts = {im: g for col in data.columns.values() for im, g in zip(col.images, col.gt)}
        blocks.append(_Table(header, [[image, num(float(gts[image]))]
                                      + [num(float(lookup[c].get(image, math.nan))) for c in data.columns]
                                      for image in chosen]))
        for image in chosen:
            blocks += [_Para(f"Pass-1 completion for {image}:"), _Code(data.perception_texts[image])]
    return blocks, entry, written


def _summary(datasets: dict) -> list:
    """One row per dataset: SRCC / PLCC of each score column."""
    columns = [c for c in COLUMN_LABELS if any(c in entry["columns"] for entry in datasets.values())]
    header = ["dataset"] + [f"{COLUMN_LABELS[c]} {k}" for c in columns for k in ("SRCC", "PLCC")]
    rows = [[name] + [num(entry["columns"][c][k]) if c in entry["columns"] else "" for c in columns
                      for k in ("srcc", "plcc")]
            for name, entry in datasets.items()]
    return [_Heading(2, "Summary"), _Table(header, rows)] if rows else []


def _training_section(log: Path, out_dir: Path) -> tuple[list, dict, list[Path]]:
    from jaxbiqa.eval import plots

    records = plots.read_training_log(log)
    names = plots.training_metrics(records)
    if not names:
        return [_Heading(2, "Training"), _Para(f"{log.name}: no numeric metrics to plot.")], {}, []
    path = plots.save_png(plots.training_figure(records, metrics=names), out_dir / PLOTS_DIR / "training.png")
    summary, rows = {}, []
    for name in names:
        _, values = plots.metric_series(records, name)
        tail = max(1, values.size // 10)
        summary[name] = {"n": int(values.size), "first": float(values[:tail].mean()),
                         "last": float(values[-tail:].mean())}
        rows.append([name, str(values.size), num(summary[name]["first"]), num(summary[name]["last"])])
    blocks = [_Heading(2, "Training"),
              _Para(f"From {log.name}: {len(records)} logged steps. First / last: mean of the first and last "
                    "10% of each metric's values."),
              _Table(("metric", "points", "first", "last"), rows),
              _Image("training curves", f"{PLOTS_DIR}/{path.name}")]
    return blocks, summary, [path]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence) -> str:
    out = []
    for b in blocks:
        if isinstance(b, _Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, _Para):
            out.append(b.text)
        elif isinstance(b, _Table):
            out.append("\n".join(["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in [b.header]]
                                 + ["|" + "|".join(["---"] * len(b.header)) + "|"]
                                 + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]))
        elif isinstance(b, _Image):
            out.append(f"![{b.alt}]({b.path})")
        elif isinstance(b, _Code):
            longest = max((len(run) for run in re.findall(r"`+", b.text)), default=0)
            fence = "`" * max(3, longest + 1)
            out.append(f"{fence}text\n{b.text}\n{fence}")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence, title: str, base: Path) -> str:
    """HTML of the blocks; images read from `base` and embedded as data URIs."""
    esc = html_lib.escape
    body = []
    for b in blocks:
        if isinstance(b, _Heading):
            body.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            body.append(f"<p>{esc(b.text)}</p>")
        elif isinstance(b, _Table):
            head = "".join(f"<th>{esc(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, _Image):
            data = base64.b64encode((base / b.path).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{esc(b.alt)}" src="data:image/png;base64,{data}"></p>')
        elif isinstance(b, _Code):
            body.append(f"<pre>{esc(b.text)}</pre>")
    style = ("body{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}"
             "pre{white-space:pre-wrap;background:#f4f4f4;padding:0.5em}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build_report(predictions: str | Path, out_dir: str | Path, *, training_log: str | Path | None = None,
                 human: str | Path | None = None, lower_is_better: Sequence[str] = (), samples: int = 3,
                 on_invalid: OnInvalid = "drop", fill_value: float = INVALID_SENTINEL, html: bool = False,
                 title: str = "jaxbiqa evaluation report",
                 skipped_records: Mapping[str, int] | None = None) -> Report:
    """Write report.md, metrics.json, plots/ (and report.html) for `predictions` into `out_dir`.
    `skipped_records` (evaluation -> bad records its pipeline skipped, from its metrics.json) is
    stated below the title and kept in metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = load_predictions(predictions)
    human_texts = load_human_texts(human) if human is not None else None
    blocks: list = [_Heading(1, title),
                    _Para(f"Predictions: {Path(predictions).name}. Invalid predictions: {on_invalid}"
                          + (f" (filled with {fill_value:g})" if on_invalid == "fill" else "")
                          + ". PLCC / RMSE (logistic): after the VQEG 4-parameter logistic fit. Ratings 1-5; "
                          "raw RMSE is against the target as given.")]
    metrics: dict = {"datasets": {}}
    if skipped_records is not None:
        metrics["skipped_records"] = dict(skipped_records)
        blocks.append(_Para("Bad records skipped by the evaluation: " + ", ".join(
            f"{name}: {count}" for name, count in skipped_records.items()) + "."))
    written: list[Path] = []
    taken: set[str] = {"training"}
    for name, data in datasets.items():
        section, entry, files = _dataset_section(
            name, data, _slug(name, taken), out_dir, lower=is_lower_is_better(name, list(lower_is_better)),
            on_invalid=on_invalid, fill_value=fill_value, human=human_texts, samples=samples)
        blocks += section
        metrics["datasets"][name] = entry
        written += files
    blocks[2:2] = _summary(metrics["datasets"])
    if training_log is not None:
        section, summary, files = _training_section(Path(training_log), out_dir)
        blocks += section
        metrics["training"] = summary
        written += files

    markdown = out_dir / "report.md"
    atomic_write(markdown, render_markdown(blocks))
    metrics_json = out_dir / "metrics.json"
    atomic_write(metrics_json, json.dumps(json_safe(metrics), indent=2) + "\n")
    html_path = None
    if html:
        html_path = out_dir / "report.html"
        atomic_write(html_path, render_html(blocks, title, out_dir))
    return Report(markdown, metrics_json, tuple(written), html_path, json_safe(metrics))
