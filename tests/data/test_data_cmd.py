"""`jaxbiqa data synth | build | inspect` through the real command line entry point."""

import json

import pytest

from jaxbiqa.cli import main
from jaxbiqa.data.tfds_builder import TfdsRecords

pytest.importorskip("skimage")


def trailing_json(text: str) -> dict:
    """The JSON object a command prints last (TFDS prints its own lines before it)."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def test_synth_build_inspect(tmp_path, capsys):
    synth = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(synth), "--photos", "coffee,moon,chelsea", "--crops-per-photo", "1",
                 "--crop-size", "32", "--types-per-crop", "1", "--seed", "4"]) == 0
    assert "wrote 18 images" in capsys.readouterr().out
    assert main(["data", "inspect", str(synth)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 18 and summary["splits"] == {"train": 12, "test": 6}
    assert summary["mos_norm_range"][1] == 5.0 and summary["with_human_text"] == 18

    out = tmp_path / "tfds"
    assert main(["data", "build", "--source", "jsonl", "--root", str(synth / "index.jsonl"), "--out", str(out),
                 "--name", "synthetic"]) == 0
    built = trailing_json(capsys.readouterr().out)
    assert built["count"] == 18 and built["path"].endswith("jaxbiqa_iqa/synthetic/1.0.0")
    assert len(TfdsRecords(out)) == 18
    assert main(["data", "inspect", str(out)]) == 0
    assert trailing_json(capsys.readouterr().out)["splits"] == {"train": 12, "test": 6}


def test_inspect_tfds_and_spec(tmp_path, capsys):
    synth = tmp_path / "synth"
    main(["data", "synth", "--out", str(synth), "--photos", "moon", "--crops-per-photo", "1", "--crop-size", "32",
          "--types-per-crop", "1", "--test-fraction", "0"])
    capsys.readouterr()
    assert main(["data", "inspect", f"jsonl:{synth / 'index.jsonl'}"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"train": 6}


def test_build_rejects_options_that_do_not_apply(tmp_path, capsys):
    assert main(["data", "build", "--source", "koniq", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--option", "colour=red"]) == 2
    assert "jaxbiqa data: error: bad --option 'colour=red' for koniq" in capsys.readouterr().err
    assert main(["data", "build", "--source", "koniq", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--image-root", str(tmp_path)]) == 2
    assert "--image-root does not apply to koniq" in capsys.readouterr().err
    assert main(["data", "build", "--source", "nope", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_build_reports_what_it_wrote_and_what_it_skipped(tmp_path, capsys):
    """The probe: `data build --on-bad-record skip` printed "count": 25 when 21 records were written."""
    synth = tmp_path / "synth"
    main(["data", "synth", "--out", str(synth), "--photos", "moon", "--crops-per-photo", "1", "--crop-size", "32",
          "--types-per-crop", "1", "--test-fraction", "0"])
    lines = (synth / "index.jsonl").read_text().splitlines()
    bad_label = json.loads(lines[1]) | {"mos_norm": 9.0}  # outside 1-5: a bad label record
    lines[1] = json.dumps(bad_label)
    (synth / json.loads(lines[2])["image"]).write_bytes(b"not a PNG")  # a bad image
    (synth / "index.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    out = tmp_path / "tfds"
    assert main(["data", "build", "--source", "jsonl", "--root", str(synth / "index.jsonl"), "--out", str(out),
                 "--on-bad-record", "skip"]) == 0
    captured = capsys.readouterr()
    built = trailing_json(captured.out)
    assert built["count"] == len(TfdsRecords(out)) == 4 and built["splits"] == {"train": 4}
    assert built["skipped"] == {"labels": 1, "images": 1}
    assert "out of range: mos_norm 9.0" in captured.err and "corrupt image" in captured.err
