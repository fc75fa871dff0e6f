"""Plots: valid PNGs of the expected size whose axes (read back from the file) are the expected ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from jaxbiqa.eval import plots
from jaxbiqa.eval.metrics import fit_logistic


def read_png(path) -> tuple[tuple[int, int], list[dict]]:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size, json.loads(im.text["Description"])


def test_importing_the_eval_package_does_not_import_matplotlib():
    code = ("import sys, jaxbiqa.eval, jaxbiqa.eval.metrics, jaxbiqa.eval.predictions, jaxbiqa.eval.predictions_cmd, "
            "jaxbiqa.eval.alignment, jaxbiqa.eval.report; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prediction_figure_with_logistic_fit(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 5, 60)
    pred = 1 + 4 / (1 + np.exp(-(target - 3))) + rng.normal(0, 0.2, 60)
    pred[[4, 9]] = [-1.0, np.nan]  # unparsable outputs
    panel = plots.prediction_panel(pred, target, what="koniq, image")
    keep = np.isfinite(pred) & (pred != -1)
    np.testing.assert_array_equal(panel.x, pred[keep])  # the two invalid ones are left out, and counted
    np.testing.assert_array_equal(panel.y, target[keep])
    assert panel.n_invalid == 2 and panel.legend == "58 images (2 invalid)"
    grid, curve = panel.curve
    assert grid.min() == pytest.approx(pred[keep].min()) and grid.max() == pytest.approx(pred[keep].max())
    np.testing.assert_allclose(curve, fit_logistic(pred[keep], target[keep])(grid), rtol=1e-9)
    assert panel.srcc == pytest.approx(stats.spearmanr(pred[keep], target[keep])[0])
    assert panel.plcc == pytest.approx(stats.pearsonr(pred[keep], target[keep])[0])

    fig = plots.prediction_figure({"image": (pred, target), "caption only": (pred[::-1], target)}, dataset="koniq")
    size, labels = read_png(plots.save_png(fig, tmp_path / "pred.png"))
    assert size == (2 * 400, 320)
    assert labels == [{"title": "koniq: image", "xlabel": "predicted rating", "ylabel": "target (MOS)"},
                      {"title": "koniq: caption only", "xlabel": "predicted rating", "ylabel": "target (MOS)"}]
    with pytest.raises(ValueError, match="koniq, image: 3 predictions but 2 targets"):
        plots.prediction_figure({"image": ([1, 2, 3], [1, 2])}, dataset="koniq")


def test_rating_figure(tmp_path):
    image = np.array([1.0, 2.0, 3.0, -1.0, 4.5, 2.5])
    caption = np.array([1.5, 2.0, np.nan, 3.0, 4.0, 3.5])
    panel = plots.rating_panel(image, caption, what="kadid", target=np.arange(6.0))
    np.testing.assert_array_equal(np.stack([panel.x, panel.y], 1), [[1.0, 1.5], [2.0, 2.0], [4.5, 4.0], [2.5, 3.5]])
    np.testing.assert_array_equal(panel.colour, [0.0, 1.0, 4.0, 5.0])  # each kept pair keeps its target
    assert panel.pearson == pytest.approx(np.corrcoef(panel.x, panel.y)[0, 1])
    assert np.isnan(plots.rating_panel([1.0, 2.0], [1.0, 2.0], what="two").pearson)
    fig = plots.rating_figure(image, caption, dataset="kadid", caption_label="caption+think",
                              target=np.arange(6.0), target_label="target (MOS)")
    size, labels = read_png(plots.save_png(fig, tmp_path / "sub" / "rating.png"))
    assert size == (500, 420)
    assert labels == [{"title": "kadid: image vs caption+think rating", "xlabel": "image-conditioned rating",
                       "ylabel": "caption+think rating"}]  # the colour bar is not a plotting axes


def write_log(path, lines):
    path.write_text("\n".join(lines))
    return path


def test_training_curves_from_a_jsonl_log(tmp_path):
    rng = np.random.default_rng(1)
    lines = [json.dumps({"config": {"lr": 1e-6}})]  # header without a step: skipped
    for step in range(40):
        record = {"step": step, "stage": "stage1" if step < 20 else "stage2",
                  "reward": {"score": 0.2 + step / 50 + rng.normal(0, 0.02), "format": 1.0},
                  "kl": 1e-3 * step, "time": 12.5 + step, "done": True}
        if step % 2:
            record["completion_length"] = 100 + step
        if step == 7:
            del record["kl"]
        lines.append(json.dumps(record))
    lines.append("")
    lines.append('{"step": 40, "reward": {"sco')  # a run still writing
    records = plots.read_training_log(write_log(tmp_path / "log.jsonl", lines))
    assert len(records) == 40 and records[0]["reward/score"] == json.loads(lines[1])["reward"]["score"]
    assert plots.training_metrics(records) == ["reward/score", "reward/format", "kl", "completion_length"]

    fig = plots.training_figure(records, smooth=5)
    size, labels = read_png(plots.save_png(fig, tmp_path / "training.png"))
    assert size == (3 * 400, 2 * 320)
    assert [a["title"] for a in labels] == ["reward/score", "reward/format", "kl", "completion_length"]
    assert {a["xlabel"] for a in labels} == {"step"}
    steps, values = plots.metric_series(records, "kl")
    assert steps.size == 39 and 7 not in steps
    kl = plots.training_panel(records, "kl", smooth=5)
    assert [line.stage for line in kl] == ["stage1", "stage2"]
    assert np.concatenate([line.steps for line in kl]).tolist() == steps.tolist()  # every raw value, by stage
    first = kl[0]
    np.testing.assert_allclose(first.smoothed[1], np.convolve(first.values, np.ones(5) / 5, mode="valid"))
    assert first.smoothed[0].tolist() == first.steps[4:].tolist()
    lengths = plots.training_panel(records, "completion_length", smooth=5)
    assert sum(line.values.size for line in lengths) == 20  # odd steps only
    assert plots.training_panel(records, "kl", smooth=50)[0].smoothed is None  # shorter than the window


def test_training_log_errors(tmp_path):
    bad = write_log(tmp_path / "bad.jsonl", ['{"step": 0, "loss": 1.0}', "{oops", '{"step": 1, "loss": 0.5}'])
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: malformed JSON"):
        plots.read_training_log(bad)
    empty = plots.read_training_log(write_log(tmp_path / "empty.jsonl", ['{"step": 0, "stage": "sft"}']))
    with pytest.raises(ValueError, match="no numeric metrics"):
        plots.training_figure(empty)
