"""Evaluation and training plots (matplotlib, Agg, PNG); the only module of jaxbiqa that imports matplotlib.

* `prediction_figure`: predicted rating vs target, one panel per score column, with the VQEG
  logistic fitted by `metrics.fit_logistic` and the SRCC / PLCC of the panel;
* `rating_figure`: image-conditioned vs caption-conditioned rating, with the diagonal;
* `training_figure`: one panel per numeric metric of a run's JSON-lines log (`read_training_log`).

What each panel shows is computed by a pure function (`prediction_panel`, `rating_panel`,
`training_panel`) that callers and tests read; the figures only draw it. Figures are plain
`matplotlib.figure.Figure`s (no pyplot state) and `save_png` writes them at a fixed size (figure
inches x `DPI`) with the axes' titles and labels in the PNG's ``Description`` text chunk as JSON
(`axes_labels`), so a PNG can be checked on its own.
"""

from __future__ import annotations

import dataclasses
import io
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
from jaxbiqa.paths import atomic_write

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
    title = fig.get_suptitle() or "; ".join(a["title"] for a in axes_labels(fig))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI,
                metadata={"Title": title, "Software": "jaxbiqa", "Description": json.dumps(axes_labels(fig))})
    atomic_write(path, png.getvalue())
    return Path(path)


def _valid_pairs(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, what: str):
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"{what}: {pred.size} predictions but {target.size} targets")
    keep = ~invalid_mask(pred) & np.isfinite(target)
    return pred[keep], target[keep], int((~keep).sum())


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


@dataclasses.dataclass(frozen=True)
class PredictionPanel:
    """What one panel of `prediction_figure` shows."""

    x: np.ndarray                   # valid predictions
    y: np.ndarray                   # their targets
    n_invalid: int                  # pairs left out (NaN / -1 prediction or NaN target)
    curve: tuple[np.ndarray, np.ndarray] | None  # the fitted logistic over [x.min, x.max]; None if no fit
    srcc: float
    plcc: float

    @property
    def legend(self) -> str:
        return f"{self.x.size} images" + (f" ({self.n_invalid} invalid)" if self.n_invalid else "")


def prediction_panel(pred: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, *, what: str,
                     lower_is_better: bool = False) -> PredictionPanel:
    x, y, n_invalid = _valid_pairs(pred, target, what)
    fit = fit_logistic(x, y)
    curve = None
    if fit.params is not None:
        grid = np.linspace(x.min(), x.max(), 200)
        curve = (grid, fit(grid))
    m = iqa_metrics(x, y, lower_is_better=lower_is_better, logistic_fit=False)
    return PredictionPanel(x, y, n_invalid, curve, m.srcc, m.plcc)


def prediction_figure(columns: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, dataset: str,
                      target_label: str = "target (MOS)", lower_is_better: bool = False) -> Figure:
    """Predicted rating (x) vs target (y), one panel per `columns` entry (label -> (pred, target)),
    with the fitted logistic curve; invalid predictions (NaN, -1) are left out and counted
    (`prediction_panel`)."""
    if not columns:
        raise ValueError(f"{dataset}: no score columns to plot")
    fig, axes = _figure(len(columns))
    for ax, (label, (pred, target)) in zip(axes, columns.items()):
        panel = prediction_panel(pred, target, what=f"{dataset}, {label}", lower_is_better=lower_is_better)
        ax.scatter(panel.x, panel.y, s=10, alpha=0.6, label=panel.legend)
        if panel.curve is not None:
            ax.plot(*panel.curve, color="C3", label="logistic fit")
        ax.text(0.02, 0.98, f"SRCC {_fmt(panel.srcc)}\nPLCC {_fmt(panel.plcc)}", transform=ax.transAxes, va="top",
                fontsize=9, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
        ax.set_title(f"{dataset}: {label}")
        ax.set_xlabel("predicted rating")
        ax.set_ylabel(target_label)
        ax.legend(loc="lower right", fontsize=8)
    return fig


@dataclasses.dataclass(frozen=True)
class RatingPanel:
    """What `rating_figure` shows: the pairs with a valid rating on both sides."""

    x: np.ndarray                   # image-conditioned ratings
    y: np.ndarray                   # caption-conditioned ratings
    colour: np.ndarray | None       # their targets, when given
    pearson: float                  # NaN below 3 pairs or without spread


def rating_panel(image_rating: Sequence[float], caption_rating: Sequence[float], *, what: str,
                 target: Sequence[float] | None = None) -> RatingPanel:
    x = np.asarray(image_rating, dtype=np.float64).ravel()
    y = np.asarray(caption_rating, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{what}: {x.size} image ratings but {y.size} caption ratings")
    keep = ~invalid_mask(x) & ~invalid_mask(y)
    colour = None
    if target is not None:
        colour = np.asarray(target, dtype=np.float64).ravel()
        if colour.shape != x.shape:
            raise ValueError(f"{what}: {x.size} ratings but {colour.size} targets")
        colour = colour[keep]
    x, y = x[keep], y[keep]
    r = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan
    return RatingPanel(x, y, colour, r)


def rating_figure(image_rating: Sequence[float], caption_rating: Sequence[float], *, dataset: str,
                  caption_label: str = "caption only", target: Sequence[float] | None = None,
                  target_label: str = "target (MOS)") -> Figure:
    """Image-conditioned (x) vs caption-conditioned (y) rating of the same images, with y = x;
    points coloured by `target` when given. Pairs with an invalid rating on either side are left
    out (`rating_panel`)."""
    panel = rating_panel(image_rating, caption_rating, what=dataset, target=target)
    fig, (ax,) = _figure(1, panel_inches=(5.0, 4.2))
    x, y = panel.x, panel.y
    points = ax.scatter(x, y, c=panel.colour, s=12, alpha=0.7, cmap="viridis" if panel.colour is not None else None)
    if panel.colour is not None:
        fig.colorbar(points, ax=ax, label=target_label)
    if x.size:
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.legend(loc="lower right", fontsize=8)
    ax.text(0.02, 0.98, f"N {x.size}\nPearson r {_fmt(panel.pearson)}", transform=ax.transAxes, va="top", fontsize=9,
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


def _stage_of(record: Mapping[str, object], stage_key: str) -> str | None:
    value = record.get(stage_key)
    return value if isinstance(value, str) else None


def _stages(records: Sequence[Mapping[str, object]], stage_key: str) -> list[str | None]:
    """The records' stages in order of first appearance."""
    return list(dict.fromkeys(_stage_of(r, stage_key) for r in records))


@dataclasses.dataclass(frozen=True)
class StageSeries:
    """One stage's line in a `training_figure` panel."""

    stage: str | None
    steps: np.ndarray               # the raw values' steps
    values: np.ndarray
    smoothed: tuple[np.ndarray, np.ndarray] | None  # (steps, moving average) when longer than the window


def training_panel(records: Sequence[Mapping[str, object]], name: str, *, smooth: int = 10,
                   stage_key: str = "stage") -> list[StageSeries]:
    """The lines of metric `name` (flattened records), one per value of their string `stage_key`
    in order of appearance; stages without the metric are left out."""
    records = [_flatten(r) for r in records]
    lines = []
    for stage in _stages(records, stage_key):
        steps, values = metric_series([r for r in records if _stage_of(r, stage_key) == stage], name)
        if values.size:
            smoothed = ((steps[smooth - 1:], _moving_average(values, smooth)) if smooth > 1 and values.size > smooth
                        else None)
            lines.append(StageSeries(stage, steps, values, smoothed))
    return lines


def training_figure(records: Sequence[Mapping[str, object]], *, metrics: Sequence[str] | None = None,
                    smooth: int = 10, stage_key: str = "stage", title: str | None = None) -> Figure:
    """One panel per metric (x: step): the raw values, and their `smooth`-point moving average when a
    series is longer than that. Nested records are flattened to ``a/b`` names; records lacking a
    metric are skipped for that panel only; records are grouped by their string `stage_key` (if
    any), each stage drawn as its own line (`training_panel`)."""
    records = [_flatten(r) for r in records]
    names = list(metrics) if metrics is not None else training_metrics(records)
    if not names:
        raise ValueError("the training log has no numeric metrics besides step")
    fig, axes = _figure(len(names))
    stages = _stages(records, stage_key)
    for ax, name in zip(axes, names):
        for line in training_panel(records, name, smooth=smooth, stage_key=stage_key):
            colour = f"C{stages.index(line.stage)}"
            if line.smoothed is not None:
                ax.plot(line.steps, line.values, color=colour, alpha=0.3, linewidth=1)
                ax.plot(*line.smoothed, color=colour, label=line.stage)
            else:
                ax.plot(line.steps, line.values, color=colour, marker="." if line.values.size < 30 else None,
                        label=line.stage)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig
