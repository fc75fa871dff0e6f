"""Plots: valid PNGs of the expected size whose axes (read back from the file) are the expected ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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
    fig = plots.prediction_figure({"image": (pred, target), "caption only": (pred[::-1], target)}, dataset="koniq")
    size, labels = read_png(plots.save_png(fig, tmp_path / "pred.png"))
    assert size == (2 * 400, 320)
    assert labels == [{"title": "koniq: image", "xlabel": "predicted rating", "ylabel": "target (MOS)"},
                      {"title": "koniq: caption only", "xlabel": "predicted rating", "ylabel": "target (MOS)"}]
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets().shape == (58, 2)  # the two invalid ones are left out
    assert ax.get_legend().get_texts()[0].get_text() == "58 images (2 invalid)"
    keep = np.isfinite(pred) & (pred != -1)
    curve = ax.lines[0]
    expected = fit_logistic(pred[keep], target[keep])(curve.get_xdata())
    np.testing.assert_allclose(curve.get_ydata(), expected, rtol=1e-9)
    assert curve.get_xdata().min() == pytest.approx(pred[keep].min())


def test_rating_figure(tmp_path):
    image = np.array([1.0, 2.0, 3.0, -1.0, 4.5, 2.5])
    caption = np.array([1.5, 2.0, np.nan, 3.0, 4.0, 3.5])
    fig = plots.rating_figure(image, caption, dataset="kadid", caption_label="caption+think",
                              target=np.arange(6.0), target_label="target (MOS)")
    size, labels = read_png(plots.save_png(fig, tmp_path / "sub" / "rating.png"))
    assert size == (500, 420)
    assert labels == [{"title": "kadid: image vs caption+think rating", "xlabel": "image-conditioned rating",
                       "ylabel": "caption+think rating"}]  # the colour bar is not a plotting axes
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[1.0, 1.5], [2.0, 2.0], [4.5, 4.0], [2.5, 3.5]])
    np.testing.assert_array_equal(ax.collections[0].get_array(), [0.0, 1.0, 4.0, 5.0])
    assert ax.lines[0].get_label() == "y = x"


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
    kl_axes = fig.axes[2]
    raw = [line for line in kl_axes.lines if line.get_alpha() == 0.3]  # raw values under the moving average
    assert sorted(np.concatenate([line.get_xdata() for line in raw]).tolist()) == steps.tolist()
    assert [t.get_text() for t in kl_axes.get_legend().get_texts()] == ["stage1", "stage2"]
    lengths = fig.axes[3].lines
    assert sum(line.get_xdata().size for line in lengths if line.get_alpha() == 0.3) == 20


def test_training_log_errors(tmp_path):
    bad = write_log(tmp_path / "bad.jsonl", ['{"step": 0, "loss": 1.0}', "{oops", '{"step": 1, "loss": 0.5}'])
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: malformed JSON"):
        plots.read_training_log(bad)
    empty = plots.read_training_log(write_log(tmp_path / "empty.jsonl", ['{"step": 0, "stage": "sft"}']))
    with pytest.raises(ValueError, match="no numeric metrics"):
        plots.training_figure(empty)
