"""Reading prediction files: the released layout, jaxbiqa JSON lines, and bad input."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from jaxbiqa.cli import main
from jaxbiqa.eval.predictions import PredictionFormatError, load_predictions


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=4))


def _released_model(root):
    """A model folder in the exact released layout; returns the expected values per column."""
    rng = np.random.default_rng(0)
    koniq_gt = rng.uniform(1, 5, 12)
    overall = np.round(koniq_gt + rng.normal(0, 0.3, 12), 2)
    reasoning = np.round(koniq_gt + rng.normal(0, 0.6, 12), 2)
    caption = np.round(koniq_gt + rng.normal(0, 0.6, 12), 2)
    images = [f"{1000 + i}.jpg" for i in range(12)]
    rows = [
        {
            "image": images[i], "gt_score": float(koniq_gt[i]), "overall_score": float(overall[i]),
            "reasoning_score": float(reasoning[i]), "caption_score": float(caption[i]) + 0.5,  # inline, stale
            "caption_answer_text": "<think>x</think>",
            "perception_text": f"<caption>photo {i}</caption><think>ok</think>",
            "reasoning_text": "<think>ok</think><answer>{}</answer>",
        }
        for i in range(12)
    ]
    rows[4]["overall_score"] = "N/A"  # unparsable prediction: counted, not an error
    rows[5]["reasoning_score"] = str(reasoning[5])  # numeric string
    for shard in range(3):  # p0..p2, four records each
        _write(root / "koniq" / f"p{shard}.json", rows[shard * 4 : shard * 4 + 4])
    # caption folder: other key set, other order, split differently
    cap_rows = [
        {"image": images[i], "gt_score": float(koniq_gt[i]), "caption_score": float(caption[i]), "reasoning_text": "t"}
        for i in reversed(range(12))
    ]
    _write(root / "koniq_caption" / "p0.json", cap_rows[:7])
    _write(root / "koniq_caption" / "p1.json", cap_rows[7:])

    dmos = rng.uniform(0, 1, 9)
    csiq_overall = np.round(5 - 4 * dmos + rng.normal(0, 0.5, 9), 2)
    csiq_caption = np.round(5 - 4 * dmos + rng.normal(0, 0.8, 9), 2)
    csiq_images = [f"CSIQ/dst_imgs/AWGN/img.AWGN.{i}.png" for i in range(9)]
    _write(root / "csiq" / "p0.json", [
        {"image": csiq_images[i], "gt_score": f"{dmos[i]:.6f}", "overall_score": float(csiq_overall[i]),
         "reasoning_score": float(csiq_overall[i]), "perception_text": "<caption>c</caption>", "reasoning_text": "r"}
        for i in range(9)
    ])
    _write(root / "csiq_caption" / "p0.json", [
        {"image": csiq_images[i], "gt_score": float(f"{dmos[i]:.6f}"), "caption_score": float(csiq_caption[i])}
        for i in range(9)
    ])
    overall_f = overall.copy()
    overall_f[4] = np.nan
    return {
        "koniq": {"gt": koniq_gt, "overall_score": overall_f, "reasoning_score": reasoning, "caption_score": caption},
        "csiq": {"gt": np.array([float(f"{d:.6f}") for d in dmos]), "overall_score": csiq_overall,
                 "reasoning_score": csiq_overall, "caption_score": csiq_caption},
    }


def test_released_layout_is_parsed(tmp_path):
    expected = _released_model(tmp_path / "m")
    data = load_predictions(tmp_path / "m")
    assert list(data) == ["csiq", "koniq"]
    koniq = data["koniq"]
    assert list(koniq.columns) == ["overall_score", "reasoning_score", "caption_score"]
    order = np.argsort([int(name[:4]) for name in koniq.columns["caption_score"].images])
    np.testing.assert_allclose(koniq.columns["caption_score"].pred[order], expected["koniq"]["caption_score"])
    np.testing.assert_allclose(koniq.columns["overall_score"].pred, expected["koniq"]["overall_score"])
    np.testing.assert_allclose(koniq.columns["reasoning_score"].pred, expected["koniq"]["reasoning_score"])
    assert koniq.columns["overall_score"].images == tuple(f"{1000 + i}.jpg" for i in range(12))  # p0, p1, p2 order
    assert "koniq_caption" in koniq.columns["caption_score"].source
    assert any("takes precedence" in note for note in koniq.notes)
    assert koniq.perception_texts["1003.jpg"] == "<caption>photo 3</caption><think>ok</think>"
    np.testing.assert_allclose(data["csiq"].columns["overall_score"].gt, expected["csiq"]["gt"])


def test_cli_table_equals_direct_metrics(tmp_path, capsys):
    expected = _released_model(tmp_path / "m")
    out = tmp_path / "metrics.json"
    assert main(["eval-predictions", str(tmp_path / "m"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "csiq  (lower is better: target negated)" in printed and "caption only" in printed
    report = json.loads(out.read_text())["models"][0]["datasets"]
    for dataset, sign in (("koniq", 1.0), ("csiq", -1.0)):
        exp = expected[dataset]
        for column in ("overall_score", "reasoning_score", "caption_score"):
            pred, gt = exp[column], exp["gt"]
            ok = np.isfinite(pred)
            got = report[dataset]["columns"][column]
            assert got["n"] == ok.sum() and got["n_invalid"] == (~ok).sum()
            assert got["plcc"] == pytest.approx(stats.pearsonr(pred[ok], sign * gt[ok]).statistic, abs=1e-9)
            assert got["srcc"] == pytest.approx(stats.spearmanr(pred[ok], sign * gt[ok]).statistic, abs=1e-9)
            assert got["krcc"] == pytest.approx(stats.kendalltau(pred[ok], sign * gt[ok]).statistic, abs=1e-9)
        cols = report[dataset]["columns"]
        assert report[dataset]["gap"]["caption_score"]["plcc"] == pytest.approx(
            cols["overall_score"]["plcc"] - cols["caption_score"]["plcc"])
    assert report["koniq"]["columns"]["overall_score"]["n_invalid"] == 1
    assert report["csiq"]["lower_is_better"] and not report["koniq"]["lower_is_better"]


def test_single_shard_and_dataset_folder(tmp_path):
    _released_model(tmp_path / "m")
    one = load_predictions(tmp_path / "m" / "koniq" / "p1.json")
    assert list(one) == ["koniq"]
    assert one["koniq"].columns["overall_score"].images == ("1004.jpg", "1005.jpg", "1006.jpg", "1007.jpg")
    caption_only = load_predictions(tmp_path / "m" / "csiq_caption")
    assert list(caption_only) == ["csiq"] and list(caption_only["csiq"].columns) == ["caption_score"]
    (tmp_path / "m" / "koniq" / "notes.json").write_text("not a shard")  # ignored: not p<N>.json
    assert len(load_predictions(tmp_path / "m" / "koniq")["koniq"].columns["overall_score"].images) == 12


def test_shards_sort_numerically(tmp_path):
    for shard in (10, 2, 1):
        _write(tmp_path / "d" / f"p{shard}.json", [{"image": f"i{shard}", "gt_score": 1.0, "overall_score": 2.0}])
    assert load_predictions(tmp_path / "d")["d"].columns["overall_score"].images == ("i1", "i2", "i10")


def test_jsonl_files(tmp_path):
    lines = [
        {"dataset": "koniq", "image": "a.jpg", "gt_score": 3.0, "overall_score": 3.1, "caption_score": None},
        {"dataset": "koniq", "image": "b.jpg", "gt_score": 2.0, "overall_score": 2.2, "caption_score": 2.5},
        {"dataset": "spaq", "image": "a.jpg", "gt_score": "40.5", "overall_score": 2.0},
    ]
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "preds.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    _write(folder / "livew" / "p0.json", [{"image": "t1.bmp", "gt_score": 50.0, "overall_score": 3.0}])
    data = load_predictions(folder)
    assert list(data) == ["koniq", "livew", "spaq"]
    caption = data["koniq"].columns["caption_score"]
    assert caption.images == ("a.jpg", "b.jpg") and math.isnan(caption.pred[0]) and caption.pred[1] == 2.5
    assert data["spaq"].columns["overall_score"].gt.tolist() == [40.5]
    assert list(load_predictions(folder / "preds.jsonl")) == ["koniq", "spaq"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"image": "a", "gt_score": 1.0}, ', r"p0\.json: malformed JSON"),
        ('{"image": "a"}', r"p0\.json: expected a JSON list"),
        (
            '[{"image": "a", "gt_score": 1}, {"image": "b", "overall_score": 2}]',
            r"p0\.json: record 1 \(b\): missing 'gt_score'",
        ),
        ('[{"image": "a", "gt_score": "high"}]', r"p0\.json: record 0 \(a\): 'gt_score' is not a number: 'high'"),
        ('[{"image": "a", "gt_score": 1}, 3]', r"p0\.json: record 1: expected a JSON object"),
        ('[{"gt_score": 1}]', r"p0\.json: record 0: missing or empty 'image'"),
    ],
)
def test_malformed_shards_name_file_and_record(tmp_path, content, message):
    (tmp_path / "koniq").mkdir()
    (tmp_path / "koniq" / "p0.json").write_text(content)
    with pytest.raises(PredictionFormatError, match=message):
        load_predictions(tmp_path / "koniq")


def test_malformed_jsonl_names_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"dataset": "d", "image": "a", "gt_score": 1}\n\n{"image": "b", "gt_score": 1}\n')
    with pytest.raises(PredictionFormatError, match=r"x\.jsonl: line 3 \(b\): missing or empty 'dataset'"):
        load_predictions(path)
    path.write_text('{"dataset": "d", "image": "a", "gt_score": 1}\n{"dataset": oops}\n')
    with pytest.raises(PredictionFormatError, match=r"x\.jsonl: line 2: malformed JSON"):
        load_predictions(path)


def test_duplicate_images_are_named(tmp_path):
    _write(tmp_path / "koniq" / "p0.json", [{"image": "a.jpg", "gt_score": 1}, {"image": "b.jpg", "gt_score": 2}])
    _write(tmp_path / "koniq" / "p1.json", [{"image": "b.jpg", "gt_score": 2}])
    message = r"'koniq': duplicate image ids: b\.jpg \(.*p0\.json: record 1 and .*p1\.json: record 0\)"
    with pytest.raises(PredictionFormatError, match=message):
        load_predictions(tmp_path / "koniq")


def test_gt_mismatch_between_folders(tmp_path):
    _write(tmp_path / "koniq" / "p0.json", [{"image": "a.jpg", "gt_score": 1.0, "overall_score": 2}])
    _write(tmp_path / "koniq_caption" / "p0.json", [{"image": "a.jpg", "gt_score": 1.5, "caption_score": 2}])
    message = r"image a\.jpg: gt_score 1\.0 at .*koniq.p0\.json: record 0 but 1\.5"
    with pytest.raises(PredictionFormatError, match=message):
        load_predictions(tmp_path)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(PredictionFormatError, match="no such file"):
        load_predictions(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictionFormatError, match="no p<N>.json shards"):
        load_predictions(tmp_path / "empty")
