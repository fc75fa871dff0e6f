"""IQA metrics against scipy / numpy, the logistic fit, invalid-prediction policies."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxbiqa.eval import metrics
from jaxbiqa.eval.metrics import fit_logistic, gap, iqa_metrics, logistic


def _noisy(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    target = rng.uniform(1, 5, n)
    return target + rng.normal(0, 0.7, n), target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_and_rmse_equal_scipy_and_numpy(seed):
    pred, target = _noisy(seed)
    m = iqa_metrics(pred, target, logistic_fit=False)
    assert m.n == 200 and m.n_invalid == 0
    assert m.plcc == pytest.approx(stats.pearsonr(pred, target).statistic, abs=1e-12)
    assert m.srcc == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-12)
    assert m.krcc == pytest.approx(stats.kendalltau(pred, target).statistic, abs=1e-12)
    assert m.rmse == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), abs=1e-12)
    assert math.isnan(m.plcc_logistic) and m.logistic_params is None


def test_lower_is_better_negates_the_target():
    pred, mos = _noisy(3)
    dmos = 1.0 - mos / 5.0  # lower is better
    m = iqa_metrics(pred, dmos, lower_is_better=True)
    assert m.plcc == pytest.approx(-stats.pearsonr(pred, dmos).statistic, abs=1e-12)
    assert m.srcc == pytest.approx(-stats.spearmanr(pred, dmos).statistic, abs=1e-12)
    assert m.krcc == pytest.approx(-stats.kendalltau(pred, dmos).statistic, abs=1e-12)
    assert m.plcc > 0.5 and m.srcc > 0.5 and m.lower_is_better
    assert m.rmse == pytest.approx(np.sqrt(np.mean((pred - dmos) ** 2)))  # raw RMSE uses the target as given
    assert m.plcc_logistic > m.plcc * 0.99  # the fit maps onto the negated target


def test_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(7)
    true = (90.0, 10.0, 3.0, 0.6)
    x = rng.uniform(1, 5, 2000)
    y = logistic(x, *true) + rng.normal(0, 2.0, x.size)
    fit = fit_logistic(x, y)
    assert fit.error is None
    b1, b2, b3, b4 = fit.params
    assert b1 == pytest.approx(true[0], rel=0.03)
    assert b2 == pytest.approx(true[1], rel=0.1)
    assert b3 == pytest.approx(true[2], abs=0.05)
    assert abs(b4) == pytest.approx(true[3], rel=0.1)
    m = iqa_metrics(x, y)
    assert m.plcc_logistic > m.plcc  # the mapping removes the non-linearity
    assert m.plcc_logistic == pytest.approx(stats.pearsonr(logistic(x, *m.logistic_params), y).statistic)
    assert m.rmse_logistic == pytest.approx(np.sqrt(np.mean((logistic(x, *m.logistic_params) - y) ** 2)))
    assert m.rmse_logistic < 2.5


def test_logistic_fit_of_decreasing_data():
    rng = np.random.default_rng(8)
    x = rng.uniform(1, 5, 500)
    y = logistic(x, 0.0, 1.0, 3.0, 0.5) + rng.normal(0, 0.02, x.size)  # decreasing in x
    fit = fit_logistic(x, y)
    assert fit.error is None
    assert np.corrcoef(fit(x), y)[0, 1] > 0.98


def test_logistic_fit_failure_is_reported_not_raised(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(metrics.optimize, "curve_fit", failing)
    pred, target = _noisy(4)
    m = iqa_metrics(pred, target)
    assert math.isnan(m.plcc_logistic) and math.isnan(m.rmse_logistic)
    assert any("maxfev" in note for note in m.notes)
    assert m.plcc == pytest.approx(stats.pearsonr(pred, target).statistic)  # raw figures unaffected


def test_degenerate_inputs_give_nan_with_reasons():
    const = iqa_metrics([3.0] * 10, np.arange(10.0))
    assert math.isnan(const.plcc) and math.isnan(const.srcc) and math.isnan(const.plcc_logistic)
    assert "constant" in const.notes[0]
    few = iqa_metrics([1.0, 2.0], [1.0, 3.0])
    assert few.n == 2 and math.isnan(few.plcc) and "2 valid pairs" in few.notes[0]
    assert fit_logistic([1, 2, 3], [1, 2, 3]).error.startswith("logistic fit needs at least 4")


def test_invalid_predictions_drop_and_fill():
    pred, target = _noisy(5, n=50)
    pred[[3, 10]] = np.nan
    pred[20] = -1.0  # the authors' sentinel
    keep = np.ones(50, bool)
    keep[[3, 10, 20]] = False

    dropped = iqa_metrics(pred, target, on_invalid="drop", logistic_fit=False)
    assert (dropped.n, dropped.n_invalid) == (47, 3)
    assert dropped.plcc == pytest.approx(stats.pearsonr(pred[keep], target[keep]).statistic)
    assert dropped.srcc == pytest.approx(stats.spearmanr(pred[keep], target[keep]).statistic)

    filled = iqa_metrics(pred, target, on_invalid="fill", fill_value=-1.0, logistic_fit=False)
    expected = np.where(keep, pred, -1.0)
    assert (filled.n, filled.n_invalid) == (50, 3)
    assert filled.plcc == pytest.approx(stats.pearsonr(expected, target).statistic)
    assert filled.rmse == pytest.approx(np.sqrt(np.mean((expected - target) ** 2)))

    no_sentinel = iqa_metrics(pred, target, sentinel=None, logistic_fit=False)
    assert no_sentinel.n_invalid == 2  # -1 is then a valid prediction


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="on_invalid"):
        iqa_metrics([1, 2, 3], [1, 2, 3], on_invalid="keep")
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        iqa_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        iqa_metrics([1, 2, 3], [1, np.nan, 2])


def test_gap_and_as_dict():
    pred, target = _noisy(6)
    image = iqa_metrics(pred, target, logistic_fit=False)
    caption = iqa_metrics(pred + np.random.default_rng(0).normal(0, 1, pred.size), target, logistic_fit=False)
    g = gap(image, caption)
    assert g == {"plcc": image.plcc - caption.plcc, "srcc": image.srcc - caption.srcc}
    assert g["plcc"] > 0
    d = image.as_dict()
    outside = int(np.sum((pred < 1) | (pred > 5)))  # kept as given, counted and noted
    assert d["plcc_logistic"] is None and d["n"] == 200 and d["n_out_of_range"] == outside > 0
    assert d["notes"] == [f"{outside} prediction(s) outside the rating range [1.0, 5.0], kept as given"]
