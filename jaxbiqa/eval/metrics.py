"""Agreement between predicted quality scores and a subjective target (MOS or DMOS).

`iqa_metrics` returns, for one column of predictions:

* SRCC (Spearman), KRCC (Kendall tau-b) and PLCC (Pearson) on the raw predictions, as the
  authors report them (`scipy.stats`);
* optionally PLCC and RMSE after the VQEG 4-parameter logistic mapping of the predictions onto
  the target, f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2, fitted with
  `scipy.optimize.curve_fit`; a fit that fails gives NaN and a note saying why, never an error;
* RMSE of the raw predictions against the target as given (only meaningful when both are on the
  same scale, e.g. ratings 1-5 against a MOS rescaled to 1-5).

Lower-is-better targets (DMOS, e.g. CSIQ): `lower_is_better=True` negates the target before the
correlations and the logistic fit, so a good model comes out with positive coefficients.

Invalid predictions (NaN, or the authors' sentinel -1 stored for unparsable outputs) are either
dropped (`on_invalid="drop"`) or replaced by `fill_value` (`on_invalid="fill"`; the authors keep
-1, i.e. fill with -1); either way they are counted in `n_invalid`. Valid predictions outside the
rating range 1-5 are kept as given, counted in `n_out_of_range` and noted.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import optimize, stats

from jaxbiqa.config import INVALID_SENTINEL, OnInvalid
from jaxbiqa.parse import DEFAULT_RANGE

NAN = float("nan")


@dataclass(frozen=True)
class IQAMetrics:
    """Metrics of one prediction column; NaN entries are explained in `notes`."""

    n: int  # pairs scored (after dropping invalid predictions)
    n_invalid: int  # NaN / sentinel predictions, dropped or filled
    srcc: float
    plcc: float
    krcc: float
    rmse: float
    plcc_logistic: float = NAN
    rmse_logistic: float = NAN
    logistic_params: tuple[float, float, float, float] | None = None
    lower_is_better: bool = False
    on_invalid: OnInvalid = "drop"
    notes: tuple[str, ...] = field(default=())
    n_out_of_range: int = 0  # valid predictions outside the rating range DEFAULT_RANGE (kept as given)

    def as_dict(self) -> dict:
        """Plain JSON-ready dict; NaN becomes None."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and math.isnan(value):
                out[key] = None
        out["logistic_params"] = list(self.logistic_params) if self.logistic_params else None
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class LogisticFit:
    params: tuple[float, float, float, float] | None
    error: str | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.params is None:
            raise ValueError(f"no logistic mapping: {self.error}")
        return logistic(np.asarray(x, dtype=np.float64), *self.params)


def logistic(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: b1 / b2 the upper / lower asymptotes, b3 the centre, |b4| the scale."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500.0, 500.0)  # exp overflow guard
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> LogisticFit:
    """Least-squares fit of `logistic` mapping x onto y; failure is reported in `error`."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 4:
        return LogisticFit(None, f"logistic fit needs at least 4 points, got {x.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return LogisticFit(None, "logistic fit impossible: constant predictions or target")
    b1, b2 = float(y.max()), float(y.min())
    if np.corrcoef(x, y)[0, 1] < 0:  # start from a decreasing curve for anti-correlated data
        b1, b2 = b2, b1
    p0 = (b1, b2, float(np.mean(x)), float(np.std(x)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)  # covariance not needed
            params, _ = optimize.curve_fit(logistic, x, y, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError) as err:
        return LogisticFit(None, f"logistic fit failed: {err}")
    if not np.all(np.isfinite(params)):
        return LogisticFit(None, "logistic fit failed: non-finite parameters")
    return LogisticFit(tuple(float(p) for p in params))


def invalid_mask(pred: np.ndarray, sentinel: float | None = INVALID_SENTINEL) -> np.ndarray:
    """True where a prediction is unparsable: NaN / inf, or equal to the sentinel."""
    bad = ~np.isfinite(pred)
    if sentinel is not None:
        bad |= pred == sentinel
    return bad


def _corr(fn, x: np.ndarray, y: np.ndarray) -> float:
    return float(fn(x, y).statistic)


def iqa_metrics(
    pred: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    *,
    lower_is_better: bool = False,
    on_invalid: OnInvalid = "drop",
    fill_value: float = INVALID_SENTINEL,
    logistic_fit: bool = True,
    sentinel: float | None = INVALID_SENTINEL,
) -> IQAMetrics:
    """SRCC / PLCC / KRCC / RMSE (and the logistic PLCC / RMSE) of `pred` against `target`."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"{pred.size} predictions but {target.size} targets")
    if not np.all(np.isfinite(target)):
        raise ValueError(f"target has {int(np.sum(~np.isfinite(target)))} non-finite values")
    bad = invalid_mask(pred, sentinel)
    outside = int(np.sum(~bad & ((pred < DEFAULT_RANGE[0]) | (pred > DEFAULT_RANGE[1]))))
    if on_invalid == "drop":
        pred, target = pred[~bad], target[~bad]
    elif on_invalid == "fill":
        pred = np.where(bad, fill_value, pred)
    else:
        raise ValueError(f"on_invalid must be 'drop' or 'fill', got {on_invalid!r}")

    n = int(pred.size)
    oriented = -target if lower_is_better else target
    rmse = float(np.sqrt(np.mean((pred - target) ** 2))) if n else NAN
    common = dict(n=n, n_invalid=int(bad.sum()), lower_is_better=lower_is_better, on_invalid=on_invalid,
                  n_out_of_range=outside)
    noted = (f"{outside} prediction(s) outside the rating range {list(DEFAULT_RANGE)}, kept as given",) if outside \
        else ()
    if n < 3 or np.ptp(pred) == 0 or np.ptp(oriented) == 0:
        reason = f"only {n} valid pairs" if n < 3 else "constant predictions or target"
        notes = (f"correlations undefined: {reason}",)
        return IQAMetrics(srcc=NAN, plcc=NAN, krcc=NAN, rmse=rmse, notes=noted + notes, **common)

    srcc = _corr(stats.spearmanr, pred, oriented)
    plcc = _corr(stats.pearsonr, pred, oriented)
    krcc = _corr(stats.kendalltau, pred, oriented)
    if not logistic_fit:
        return IQAMetrics(srcc=srcc, plcc=plcc, krcc=krcc, rmse=rmse, notes=noted, **common)

    fit = fit_logistic(pred, oriented)
    if fit.params is None:
        return IQAMetrics(srcc=srcc, plcc=plcc, krcc=krcc, rmse=rmse, notes=noted + (fit.error,), **common)
    mapped = fit(pred)
    rmse_logistic = float(np.sqrt(np.mean((mapped - oriented) ** 2)))
    if np.ptp(mapped) == 0:
        notes = ("logistic PLCC undefined: the fitted curve is flat over the predictions",)
        plcc_logistic = NAN
    else:
        notes, plcc_logistic = (), _corr(stats.pearsonr, mapped, oriented)
    return IQAMetrics(
        srcc=srcc, plcc=plcc, krcc=krcc, rmse=rmse, plcc_logistic=plcc_logistic,
        rmse_logistic=rmse_logistic, logistic_params=fit.params, notes=noted + notes, **common,
    )


# datasets whose target is lower-is-better (DMOS) when their name contains one of these words
AUTO_LOWER_IS_BETTER = ("csiq",)


def is_lower_is_better(dataset: str, explicit: Sequence[str] = ()) -> bool:
    """Whether `dataset`'s target is lower-is-better: named in `explicit`, or its name (split on
    non-alphanumerics, case-insensitive) contains a word of AUTO_LOWER_IS_BETTER."""
    if dataset.lower() in {name.lower() for name in explicit}:
        return True
    return any(token in AUTO_LOWER_IS_BETTER for token in re.split(r"[^a-z0-9]+", dataset.lower()))


def gap(image: IQAMetrics, caption: IQAMetrics) -> dict[str, float]:
    """Image-conditioned minus caption-conditioned PLCC and SRCC (smaller = more self-consistent)."""
    return {"plcc": image.plcc - caption.plcc, "srcc": image.srcc - caption.srcc}
