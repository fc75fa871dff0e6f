"""`jaxbiqa eval-predictions` on the bundled samples, options, and error exits."""

import importlib.util
import json
import re

import pytest

from jaxbiqa.cli import main
from jaxbiqa.eval import SAMPLES_DIR
from jaxbiqa.eval.metrics import is_lower_is_better


def _row(printed: str, dataset: str, label: str) -> list[str]:
    block = printed.split(f"\n{dataset}", 1)[1]
    return re.search(rf"^  {re.escape(label)}\s+(.*)$", block, re.M).group(1).split()


def test_bundled_sample_prints_a_table(capsys, tmp_path):
    out = tmp_path / "m.json"
    rc = main(["eval-predictions", str(SAMPLES_DIR / "model_a"), str(SAMPLES_DIR / "model_b"),
               "--human", str(SAMPLES_DIR / "human.json"), "--logistic", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "== model_a" in printed and "== model_b" in printed
    assert "csiq  (lower is better: target negated)" in printed
    header = re.search(r"^  score\s+(.*)$", printed, re.M).group(1).split()
    assert header == ["N", "invalid", "PLCC", "SRCC", "KRCC", "RMSE", "PLCC-L", "RMSE-L"]
    image = _row(printed, "koniq", "image")
    assert image[:2] == ["19", "1"]  # 20 images, one unparsable (-1) output dropped
    assert all(0.5 < float(v) <= 1.0 for v in image[2:5])  # made-up model tracks the target
    csiq = _row(printed, "csiq", "image")
    assert float(csiq[2]) > 0.5  # positive once the DMOS is negated
    assert "gap image - caption only:" in printed
    assert re.search(r"ROUGE-1 caption vs human \(N=12\): P 0\.\d{3}  R 0\.\d{3}  F 0\.\d{3}", printed)
    report = json.loads(out.read_text())
    model_a = report["models"][0]
    assert model_a["label"] == "model_a" and set(model_a["datasets"]) == {"csiq", "koniq"}
    assert model_a["datasets"]["koniq"]["alignment"]["n"] == 12
    assert report["settings"]["on_invalid"] == "drop"


def test_fill_keeps_invalid_predictions(capsys, tmp_path):
    out = tmp_path / "m.json"
    assert main(["eval-predictions", str(SAMPLES_DIR / "model_a"), "--on-invalid", "fill", "--json", str(out)]) == 0
    column = json.loads(out.read_text())["models"][0]["datasets"]["koniq"]["columns"]["overall_score"]
    assert (column["n"], column["n_invalid"], column["on_invalid"]) == (20, 1, "fill")
    assert column["plcc_logistic"] is None  # no --logistic


def test_explicit_lower_is_better(tmp_path, capsys):
    folder = tmp_path / "kadid"
    folder.mkdir()
    records = [{"image": f"{i}.png", "gt_score": float(i), "overall_score": 5.0 - i} for i in range(5)]
    (folder / "p0.json").write_text(json.dumps(records))
    out = tmp_path / "m.json"

    def srcc() -> float:
        return json.loads(out.read_text())["models"][0]["datasets"]["kadid"]["columns"]["overall_score"]["srcc"]

    assert main(["eval-predictions", str(folder), "--json", str(out)]) == 0
    assert srcc() == pytest.approx(-1.0)
    assert main(["eval-predictions", str(folder), "--lower-is-better", "KADID", "--json", str(out)]) == 0
    assert srcc() == pytest.approx(1.0)


def test_csiq_auto_detection():
    assert is_lower_is_better("csiq", []) and is_lower_is_better("CSIQ-test", [])
    assert not is_lower_is_better("koniq", []) and not is_lower_is_better("csiqx", [])
    assert is_lower_is_better("pipal", ["PIPAL"])


def test_bad_input_exits_with_a_message(tmp_path, capsys):
    (tmp_path / "koniq").mkdir()
    (tmp_path / "koniq" / "p0.json").write_text('[{"image": "a"}]')
    assert main(["eval-predictions", str(tmp_path / "koniq")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "p0.json: record 0 (a): missing 'gt_score'" in err


def test_samples_match_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES_DIR / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    bundled = sorted(p.relative_to(SAMPLES_DIR) for p in SAMPLES_DIR.rglob("*.json"))
    assert generated == bundled
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (SAMPLES_DIR / rel).read_bytes(), rel


def test_empty_and_undecodable_files_are_errors_naming_the_file(tmp_path, capsys):
    """The probes: an empty predictions file exited 0; a file that is not UTF-8 ended in a traceback."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval-predictions", str(empty)]) == 2
    assert f"{empty}: no prediction records in it" in capsys.readouterr().err
    for name, data in (("binary.jsonl", b"\xff\xfe{"), ("koniq/p0.json", b"\xff\xfe[")):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        assert main(["eval-predictions", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}: not UTF-8 text" in err and "Traceback" not in err


def test_out_of_range_predictions_are_counted_and_noted(tmp_path, capsys):
    path = tmp_path / "preds.jsonl"
    rows = [("a", 3.0, 7.0), ("b", 4.0, 2.0), ("c", 2.0, -3.0), ("d", 5.0, 4.0), ("e", 1.0, None)]
    path.write_text("".join(json.dumps({"dataset": "toy", "image": i, "gt_score": gt, "overall_score": pred}) + "\n"
                            for i, gt, pred in rows))
    out = tmp_path / "out.json"
    assert main(["eval-predictions", str(path), "--json", str(out)]) == 0
    assert "note: 2 prediction(s) outside the rating range [1.0, 5.0], kept as given" in capsys.readouterr().out
    image = json.loads(out.read_text())["models"][0]["datasets"]["toy"]["columns"]["overall_score"]
    assert image["n_out_of_range"] == 2 and image["n_invalid"] == 1 and image["n"] == 4
