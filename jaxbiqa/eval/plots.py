"""Evaluation and training plots (matplotlib, Agg, PNG); the only module of jaxbiqa that imports matplotlib.

* `prediction_figure`: predicted rating vs target, one panel per score column, with the VQEG
  logistic fitted by `metrics.fit_logistic` and the SRCC / PLCC of the panel;
* `rating_figure`: image-conditioned vs caption-conditioned rating, with the diagonal;
* `training_figure`: one panel per numeric metric of a run's JSON-lines log (`read_training_log`).

Figures are plain `matplotlib.figure.Figure`s (no pyplot state): callers read their axes, and
`save_png` writes them at a fixed size (figure inches x `DPI`) with the axes' titles and labels in
the PNG's ``Description`` text chunk as JSON (`axes_labels`), so a PNG can be checked on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as err:  # the `demo` extra
    raise ImportError("jaxbiqa's plots need matplotlib: pip install 'jaxbiqa[demo]'") from err

from jaxbiqa.eval.metrics import fit_logistic, iqa_metrics, invalid_mask

DPI = 100
PANEL_INCHES = (4.0, 3.2)  # width, height of one panel
MAX_COLUMNS = 3
NOT_METRICS = ("step", "time", "timestamp", "wall_time")  # numeric log fields that are not curves


def _figure(panels: int, columns: int = MAX_COLUMNS, panel_inches: tuple[float, float] = PANEL_INCHES):
    """A constrained-layout figure with a grid of `panels` axes (unused cells removed)."""
    cols = max(1, min(columns, panels))
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(panel_inches[0] * cols, panel_inches[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[panels:]:
        fig.delaxes(ax)
    return fig, list(grid[:panels])


def axes_labels(fig: Figure) -> list[dict[str, str]]:
    """Title, x label and y label of each plotting axes of `fig` (colour bars left out)."""
    return [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()}
            for ax in fig.axes if ax.get_label() != "<colorbar>"]


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG of figure size x `DPI` pixels, its axes labels in the ``Description`` chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = fig.get_suptitle() or "; ".join(a["title"] for a in axes_labels(fig))
    fig.savefig(path, format="png", dpi=DPI,
                metadata={"Title": title, "Software": "jaxbiqa", "Description": json.dumps(axes_labels(fig))})
    return path


def _valid_pairs(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, what: str):
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"{what}: {pred.size} predictions but {target.size} targets")
    keep = ~invalid_mask(pred) & np.isfinite(target)
    return pred[keep], target[keep], int((~keep).sum())


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def prediction_figure(columns: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, dataset: str,
                      target_label: str = "target (MOS)", lower_is_better: bool = False) -> Figure:
    """Predicted rating (x) vs target (y), one panel per `columns` entry (label -> (pred, target)),
    with the fitted logistic curve; invalid predictions (NaN, -1) are left out and counted."""
    if not columns:
        raise ValueError(f"{dataset}: no score columns to plot")
    fig, axes = _figure(len(columns))
    for ax, (label, (pred, target)) in zip(axes, columns.items()):
        x, y, n_invalid = _valid_pairs(pred, target, f"{dataset}, {label}")
        ax.scatter(x, y, s=10, alpha=0.6, label=f"{x.size} images" + (f" ({n_invalid} invalid)" if n_invalid else ""))
        fit = fit_logistic(x, y)
        if fit.params is not None:
            grid = np.linspace(x.min(), x.max(), 200)
            ax.plot(grid, fit(grid), color="C3", label="logistic fit")
        m = iqa_metrics(x, y, lower_is_better=lower_is_better, logistic_fit=False)
        ax.text(0.02, 0.98, f"SRCC {_fmt(m.srcc)}\nPLCC {_fmt(m.plcc)}", transform=ax.transAxes, va="top",
                fontsize=9, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
        ax.set_title(f"{dataset}: {label}")
        ax.set_xlabel("predicted rating")
        ax.set_ylabel(target_label)
        ax.legend(loc="lower right", fontsize=8)
    return fig


def rating_figure(image_rating: Sequence[float], caption_rating: Sequence[float], *, dataset: str,
                  caption_label: str = "caption only", target: Sequence[float] | None = None,
                  target_label: str = "target (MOS)") -> Figure:
    """Image-conditioned (x) vs caption-conditioned (y) rating of the same images, with y = x;
    points coloured by `target` when given. Pairs with an invalid rating on either side are left out."""
    x = np.asarray(image_rating, dtype=np.float64).ravel()
    y = np.asarray(caption_rating, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{dataset}: {x.size} image ratings but {y.size} caption ratings")
    keep = ~invalid_mask(x) & ~invalid_mask(y)
    fig, (ax,) = _figure(1, panel_inches=(5.0, 4.2))
    colour = None
    if target is not None:
        colour = np.asarray(target, dtype=np.float64).ravel()
        if colour.shape != x.shape:
            raise ValueError(f"{dataset}: {x.size} ratings but {colour.size} targets")
        colour = colour[keep]
    x, y = x[keep], y[keep]
    points = ax.scatter(x, y, c=colour, s=12, alpha=0.7, cmap="viridis" if colour is not None else None)
    if colour is not None:
        fig.colorbar(points, ax=ax, label=target_label)
    if x.size:
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.legend(loc="lower right", fontsize=8)
    r = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan
    ax.text(0.02, 0.98, f"N {x.size}\nPearson r {_fmt(r)}", transform=ax.transAxes, va="top", fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.set_title(f"{dataset}: image vs {caption_label} rating")
    ax.set_xlabel("image-conditioned rating")
    ax.set_ylabel(f"{caption_label} rating")
    return fig


# ------------------------------------------------------------------------------------- training log

def _flatten(record: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_training_log(path: str | Path) -> list[dict[str, object]]:
    """The records of a JSON-lines training log, nested objects flattened to ``a/b`` keys.

    Blank lines, records without a numeric ``step`` (headers, config dumps) and a truncated last
    line (a run still writing) are skipped; any other malformed line raises, naming file and line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number}: malformed JSON: {err}") from err
        if not isinstance(record, Mapping):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        record = _flatten(record)
        if _is_number(record.get("step")):
            records.append(record)
    return records


def training_metrics(records: Sequence[Mapping[str, object]], exclude: Sequence[str] = NOT_METRICS) -> list[str]:
    """Numeric fields of the records in order of first appearance, less `exclude`."""
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in exclude and _is_number(value):
                seen.setdefault(key)
    return list(seen)


def metric_series(records: Sequence[Mapping[str, object]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) float64 of the (flattened) records that carry a finite `name`, sorted by step."""
    rows = [r for r in records if _is_number(r.get(name))]
    steps = np.array([float(r["step"]) for r in rows])
    values = np.array([float(r[name]) for r in rows])
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def training_figure(records: Sequence[Mapping[str, object]], *, metrics: Sequence[str] | None = None,
                    smooth: int = 10, stage_key: str = "stage", title: str | None = None) -> Figure:
    """One panel per metric (x: step): the raw values, and their `smooth`-point moving average when a
    series is longer than that. Nested records are flattened to ``a/b`` names; records lacking a
    metric are skipped for that panel only; records are grouped by their string `stage_key` (if
    any), each stage drawn as its own line."""
    records = [_flatten(r) for r in records]
    names = list(metrics) if metrics is not None else training_metrics(records)
    if not names:
        raise ValueError("the training log has no numeric metrics besides step")
    fig, axes = _figure(len(names))
    def stage_of(record: Mapping[str, object]) -> str | None:
        return record.get(stage_key) if isinstance(record.get(stage_key), str) else None

    stages = list(dict.fromkeys(stage_of(r) for r in records))
    for ax, name in zip(axes, names):
        for i, stage in enumerate(stages):
            steps, values = metric_series([r for r in records if stage_of(r) == stage], name)
            if not values.size:
                continue
            colour = f"C{i}"
            if smooth > 1 and values.size > smooth:
                ax.plot(steps, values, color=colour, alpha=0.3, linewidth=1)
                ax.plot(steps[smooth - 1:], _moving_average(values, smooth), color=colour, label=stage)
            else:
                ax.plot(steps, values, color=colour, marker="." if values.size < 30 else None, label=stage)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig
