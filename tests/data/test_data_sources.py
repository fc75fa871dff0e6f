"""Each reader on small files in its dataset's original layout, written here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jaxbiqa.data.records import MOS_SCALES, BadRecordError, SkipReport
from jaxbiqa.data.sources import (
    READERS, attach_targets, read_agiqa3k, read_conversations, read_csiq, read_jsonl, read_kadid, read_koniq,
    read_live_challenge, read_meta_json, read_pipal, read_qreasoning, read_source, read_spaq,
)
from jaxbiqa.data.sources.common import LabelFileError, load_split_file
from jaxbiqa.data.sources.qreasoning import english_text


def write_csv(path: Path, header: list[str], rows: list[list], quoting: int = csv.QUOTE_MINIMAL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=quoting)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


# ---------------------------------------------------------------- KonIQ-10k

KONIQ_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]


def koniq_root(tmp_path: Path, rows: list[list] | None = None, sets: bool = True) -> Path:
    rows = rows or [["10004473376.jpg", 0, 0, 25, 73, 7, 105, 3.828571429, 0.527278765, 77.38362069],
                    ["10007357496.jpg", 0, 3, 45, 47, 1, 96, 3.479166667, 0.580664333, 68.1398116],
                    ["826373.jpg", 2, 10, 60, 20, 0, 92, 3.086956522, 0.654, 3.91176],
                    ["1000.jpg", 0, 0, 1, 30, 70, 101, 4.31, 0.5, 88.38889]]
    write_csv(tmp_path / "koniq10k_scores_and_distributions.csv", KONIQ_HEADER, rows, csv.QUOTE_NONNUMERIC)
    if sets:
        write_csv(tmp_path / "koniq10k_distributions_sets.csv", ["image_name", "c1", "MOS", "set"],
                  [[rows[0][0], 0, 3.8, "training"], [rows[1][0], 0, 3.4, "validation"],
                   [rows[2][0], 2, 3.0, "test"], [rows[3][0], 0, 4.3, "training"]], csv.QUOTE_NONNUMERIC)
    return tmp_path


def test_koniq_reads_mos_zscore_and_official_sets(tmp_path):
    records = by_id(read_koniq(koniq_root(tmp_path)))
    first = records["10004473376.jpg"]
    assert first["mos"] == pytest.approx(77.38362069)
    assert first["mos_norm"] == pytest.approx(1 + 4 * (77.38362069 - 3.91176) / (88.38889 - 3.91176))
    assert first["image"] == str(tmp_path / "512x384" / "10004473376.jpg")
    assert records["826373.jpg"]["mos_norm"] == pytest.approx(1.0)
    assert records["1000.jpg"]["mos_norm"] == pytest.approx(5.0)
    assert {k: r["split"] for k, r in records.items()} == {
        "10004473376.jpg": "train", "10007357496.jpg": "test", "826373.jpg": "test", "1000.jpg": "train"}
    assert first["dataset"] == "koniq"


def test_koniq_options_mos_column_and_split_file(tmp_path):
    root = koniq_root(tmp_path, sets=False)
    records = read_koniq(root, score_column="MOS", image_dir="1024x768")
    assert {r["split"] for r in records} == {"all"}
    assert by_id(records)["1000.jpg"]["mos_norm"] == pytest.approx(MOS_SCALES["koniq_mos"].normalise(4.31))
    assert "1024x768" in records[0]["image"]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["10004473376.jpg"], "test": ["1000.jpg"]}))
    records = by_id(read_koniq(root, split_file=split))
    assert {k: r["split"] for k, r in records.items()} == {"10004473376.jpg": "train", "1000.jpg": "test"}


def test_koniq_bad_rows_raise_naming_the_line_or_are_skipped(tmp_path):
    rows = [["a.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, 50.0],
            ["b.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, float("nan")],     # NaN MOS
            ["c.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, ""],               # missing MOS
            ["../../escape.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, 40.0],  # path out of the root
            ["a.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, 60.0],             # duplicate id
            ["d.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, 99.0],             # outside the KonIQ range
            ["e.jpg", 0, 0, 0, 0, 0, 0, 3.0, 0.5, 45.0]]
    root = koniq_root(tmp_path, rows, sets=False)
    with open(root / "koniq10k_scores_and_distributions.csv", "a") as handle:
        handle.write('"f.jpg",1,2\n')                                  # too few cells
    with pytest.raises(BadRecordError, match=r"koniq10k_scores_and_distributions.csv line 3 column MOS_zscore"):
        read_koniq(root)
    report = SkipReport()
    records = read_koniq(root, on_bad="skip", report=report)
    assert [r["id"] for r in records] == ["a.jpg", "e.jpg"]
    reasons = [reason for _, reason in report.entries]
    assert len(reasons) == 6
    assert any("not a finite number" in r for r in reasons) and any("missing value" in r for r in reasons)
    assert any("escapes the dataset root" in r for r in reasons) and any("duplicate id" in r for r in reasons)
    assert any("outside" in r for r in reasons) and any("malformed row" in r for r in reasons)
    assert any(where.endswith("line 9") for where, _ in report.entries)


def test_missing_label_file_and_column_are_clear(tmp_path):
    with pytest.raises(LabelFileError, match="KonIQ-10k label file not found"):
        read_koniq(tmp_path)
    write_csv(tmp_path / "koniq10k_scores_and_distributions.csv", ["image_name", "MOS"], [["a.jpg", 3.0]])
    with pytest.raises(LabelFileError, match=r"missing column\(s\) \['MOS_zscore'\]"):
        read_koniq(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_koniq(tmp_path / "nowhere")


# ---------------------------------------------------------------- SPAQ

def test_spaq_reads_the_xlsx(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    sheet.append(["00001.jpg", 48.86, 51.2, 40.0, 45.3, 50.1, 44.9])
    sheet.append(["00002.jpg", 96, 60.0, 61.0, 62.0, 63.0, 64.0])
    sheet.append(["00003.jpg", "n/a", 1, 1, 1, 1, 1])
    (tmp_path / "Annotations").mkdir()
    book.save(tmp_path / "Annotations" / "MOS and Image attribute scores.xlsx")
    with pytest.raises(BadRecordError, match="row 4 column MOS: not a number"):
        read_spaq(tmp_path)
    records = by_id(read_spaq(tmp_path, on_bad="skip"))
    assert set(records) == {"00001.jpg", "00002.jpg"}
    assert records["00001.jpg"]["mos_norm"] == pytest.approx(1 + 4 * (48.86 - 2) / 94)
    assert records["00002.jpg"]["mos_norm"] == pytest.approx(5.0)
    assert records["00001.jpg"]["image"] == str(tmp_path / "TestImage" / "00001.jpg")
    assert records["00001.jpg"]["split"] == "test"


# ---------------------------------------------------------------- KADID-10k

def test_kadid_reads_dmos_with_distortion_and_level(tmp_path):
    write_csv(tmp_path / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"],
              [["I01_01_01.png", "I01.png", 4.57, 0.2], ["I01_10_05.png", "I01.png", 1.0, 0.3],
               ["I81_17_03.png", "I81.png", 4.93, 0.1], ["I02_25_02.png", "I02.png", 3.2, 0.4]])
    records = by_id(read_kadid(tmp_path))
    assert records["I01_01_01.png"]["mos_norm"] == pytest.approx(1 + 4 * (4.57 - 1.0) / 3.93)
    assert records["I01_10_05.png"]["mos_norm"] == pytest.approx(1.0)
    assert records["I81_17_03.png"]["mos_norm"] == pytest.approx(5.0)
    assert [(records[k]["distortion"], records[k]["severity"]) for k in records] == [
        ("blur", "slight"), ("compression", "catastrophic"), ("darken", "obvious"), ("contrast", "moderate")]
    assert records["I01_01_01.png"]["image"] == str(tmp_path / "images" / "I01_01_01.png")


# ---------------------------------------------------------------- LIVE Challenge

def test_live_challenge_reads_the_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    names = np.empty((4, 1), dtype=object)
    for i, name in enumerate(["t1.bmp", "t2.bmp", "101.bmp", "102.bmp"]):
        names[i, 0] = np.array([name])
    (tmp_path / "Data").mkdir()
    scipy_io.savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": names})
    scipy_io.savemat(tmp_path / "Data" / "AllMOS_release.mat",
                     {"AllMOS_release": np.array([[63.96, 3.42, 92.4319526627219, 50.0]])})
    (tmp_path / "Images" / "trainingImages").mkdir(parents=True)
    (tmp_path / "Images" / "trainingImages" / "t1.bmp").write_bytes(b"x")
    records = by_id(read_live_challenge(tmp_path))
    assert list(records) == ["t1.bmp", "t2.bmp", "101.bmp", "102.bmp"]
    assert records["t1.bmp"]["image"] == str(tmp_path / "Images" / "trainingImages" / "t1.bmp")
    assert records["101.bmp"]["image"] == str(tmp_path / "Images" / "101.bmp")
    assert records["t2.bmp"]["mos_norm"] == pytest.approx(1.0)
    assert records["101.bmp"]["mos_norm"] == pytest.approx(5.0)
    scipy_io.savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[60.0, 50.0]])})
    with pytest.raises(LabelFileError, match="lists 4 images but AllMOS_release.mat has 2 scores"):
        read_live_challenge(tmp_path)


# ---------------------------------------------------------------- AGIQA-3K

def test_agiqa3k_reads_data_csv(tmp_path):
    header = ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"]
    write_csv(tmp_path / "data.csv", header,
              [["AttnGAN_normal_000.jpg", "a cat on a mat", "", "", "", 1.25, 0.6, 2.5, 0.7],
               ["sdxl_anime_001.jpg", "a castle", "beautiful", "", "anime", 4.0, 0.4, 3.75, 0.5]])
    (tmp_path / "AGIQA-3K").mkdir()
    records = by_id(read_agiqa3k(tmp_path))
    assert records["AttnGAN_normal_000.jpg"]["mos_norm"] == pytest.approx(1 + 4 * 1.25 / 5)
    assert records["sdxl_anime_001.jpg"]["image"] == str(tmp_path / "AGIQA-3K" / "sdxl_anime_001.jpg")
    data_scaled = by_id(read_agiqa3k(tmp_path, scale="data", score_column="mos_align"))
    assert data_scaled["AttnGAN_normal_000.jpg"]["mos_norm"] == pytest.approx(1.0)
    assert data_scaled["sdxl_anime_001.jpg"]["mos_norm"] == pytest.approx(5.0)


# ---------------------------------------------------------------- CSIQ

def test_csiq_reads_the_official_xlsx_lower_is_better(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "all_by_image"
    sheet.append(["CSIQ DMOS scores"])
    sheet.append(["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"])
    sheet.append([1600, 1, "noise", 1, 0.01, 0.061989])
    sheet.append(["aerial_city", 5, "jpeg 2000", 3, 0.02, 0.5])
    sheet.append(["boston", 3, "contrast", 4, 0.03, 1.0])
    sheet.append(["boston", 3, "sepia", 4, 0.03, 0.3])
    book.save(tmp_path / "csiq.DMOS.xlsx")
    with pytest.raises(BadRecordError, match="row 6: unknown dst_type 'sepia'"):
        read_csiq(tmp_path)
    records = by_id(read_csiq(tmp_path, on_bad="skip"))
    assert list(records) == ["1600.AWGN.1.png", "aerial_city.jpeg2000.3.png", "boston.contrast.4.png"]
    first = records["1600.AWGN.1.png"]
    assert first["image"] == str(tmp_path / "dst_imgs" / "AWGN" / "1600.AWGN.1.png")
    assert first["mos"] == pytest.approx(0.061989)
    assert first["mos_norm"] == pytest.approx(1 + 4 * (1 - 0.061989))
    assert records["boston.contrast.4.png"]["mos_norm"] == pytest.approx(1.0)
    assert (first["distortion"], first["severity"]) == ("noise", "slight")
    assert records["aerial_city.jpeg2000.3.png"]["distortion"] == "compression"


def test_csiq_reads_a_label_list(tmp_path):
    (tmp_path / "csiq_label.txt").write_text("1600.AWGN.1.png 0.061989\nfisher.BLUR.5.png,0.9\n\nbad line here\n")
    with pytest.raises(BadRecordError, match="csiq_label.txt line 4: malformed row"):
        read_csiq(tmp_path)
    records = by_id(read_csiq(tmp_path, on_bad="skip"))
    assert records["fisher.BLUR.5.png"]["image"] == str(tmp_path / "dst_imgs" / "BLUR" / "fisher.BLUR.5.png")
    assert (records["fisher.BLUR.5.png"]["distortion"], records["fisher.BLUR.5.png"]["severity"]) == (
        "blur", "catastrophic")


# ---------------------------------------------------------------- PIPAL

def test_pipal_reads_label_folder(tmp_path):
    (tmp_path / "Train_Label").mkdir()
    (tmp_path / "Train_Label" / "A0001.txt").write_text("A0001_00_00.bmp,1520.0648\nA0001_00_01.bmp,916.7136\n")
    (tmp_path / "Train_Label" / "A0002.txt").write_text("A0002_10_03.bmp,1835.9856\n")
    for folder, name in (("Distortion_1", "A0001_00_00.bmp"), ("Distortion_2", "A0002_10_03.bmp")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"x")
    records = by_id(read_pipal(tmp_path))
    assert len(records) == 3
    assert records["A0001_00_00.bmp"]["image"] == str(tmp_path / "Distortion_1" / "A0001_00_00.bmp")
    assert records["A0002_10_03.bmp"]["image"] == str(tmp_path / "Distortion_2" / "A0002_10_03.bmp")
    assert records["A0001_00_01.bmp"]["mos_norm"] == pytest.approx(1.0)
    assert records["A0002_10_03.bmp"]["mos_norm"] == pytest.approx(5.0)


# ---------------------------------------------------------------- Q-Reasoning

def test_qreasoning_answer_form(tmp_path):
    rows = [{"description": {"answer": "A parking lot."}, "quality": 1.33, "good_aspect": {"answer": "Nostalgic."},
             "good_impact": 3, "bad_aspect": {"answer": "Tilted."}, "bad_impact": 3, "edit_quality": 1.67,
             "quality_shift": 0.33, "instruction": {"answer": "Straighten it."}, "image": "05984.jpg"}]
    path = tmp_path / "human_test.json"
    path.write_text(json.dumps(rows))
    (record,) = read_qreasoning(path, image_root=tmp_path / "images")
    assert (record["dataset"], record["split"], record["id"]) == ("qreasoning", "test", "05984.jpg")
    assert record["description"] == "A parking lot." and record["instruction"] == "Straighten it."
    assert record["quality"] == pytest.approx(1.33) and record["good_impact"] == 3.0
    assert math.isnan(record["mos"]) and math.isnan(record["mos_norm"])
    assert record["image"] == str(tmp_path / "images" / "05984.jpg")


def test_qreasoning_translation_and_mixed_cot_forms(tmp_path):
    annotated = {"description": "<summarize>パンダ</summarize>  \n<translation>A panda. </translation>  ",
                 "quality": 2, "good_aspect": "<summarize>x</summarize>\n<translation>\n\"Clear.\"\n</translation>",
                 "good_impact": 2.5, "bad_aspect": "<summarize>only Japanese</summarize>", "bad_impact": 1.5,
                 "edit_quality": 3, "quality_shift": 1, "instruction": "<translation>Refocus.</translation>",
                 "image": "10047832035.jpg", "ori_score": 71.8, "normalized_score": 4.214514506769425}
    plain = {"image": "10004473376.jpg", "quality": 77.3836206897, "normalized_score": 4.478899486428679,
             "description": " ", "good_aspect": " ", "bad_aspect": " "}
    path = tmp_path / "mixed_cot.json"
    path.write_text(json.dumps([plain, annotated]))
    records = by_id(read_qreasoning(path))
    first, second = records["10004473376.jpg"], records["10047832035.jpg"]
    assert {r["dataset"] for r in records.values()} == {"koniq"} and {r["split"] for r in records.values()} == {"train"}
    assert first["mos"] == pytest.approx(77.3836206897) and first["mos_norm"] == pytest.approx(4.478899486428679)
    assert math.isnan(first["quality"]) and first["description"] == ""
    assert second["mos"] == pytest.approx(71.8) and second["quality"] == 2.0
    assert second["description"] == "A panda." and second["good_aspect"] == '"Clear."'
    assert second["bad_aspect"] == "" and second["instruction"] == "Refocus."


def test_qreasoning_per_annotator_form_and_attach_targets(tmp_path):
    rows = [{"8402295544.jpg": {"description": ["red flower", "flower"], "quality": 2,
                                "good_aspect": ["Close-up.", "vivid"], "good_impact": 3,
                                "bad_aspect": ["a little", "Dark background."], "bad_impact": 3,
                                "edit_quality": 3, "quality_shift": 1, "instruction": ["Focus.", "Brighten."]}}]
    path = tmp_path / "filted_data_human_eng.json"
    path.write_text(json.dumps(rows))
    (record,) = read_qreasoning(path, split="test")
    assert record["description"] == "red flower\nflower" and record["split"] == "test"
    target = {"id": "8402295544.jpg", "mos": 60.0, "mos_norm": 3.65}
    (joined,) = attach_targets([record], [target])
    assert (joined["mos"], joined["mos_norm"]) == (60.0, 3.65)
    assert math.isnan(record["mos"])  # the input is not modified


def test_qreasoning_bad_items(tmp_path):
    path = tmp_path / "x_test.json"
    path.write_text(json.dumps([{"description": {"text": "no answer key"}, "image": "a.jpg"},
                                {"description": "fine", "image": ""}, {"description": "ok", "image": "b.jpg"}]))
    with pytest.raises(BadRecordError, match="x_test.json item 0 field description: a text object needs an 'answer'"):
        read_qreasoning(path)
    report = SkipReport()
    assert [r["id"] for r in read_qreasoning(path, on_bad="skip", report=report)] == ["b.jpg"]
    assert len(report) == 2
    path.write_text('[{"image": "a.jpg",}]')
    with pytest.raises(LabelFileError, match="malformed JSON at line 1 column"):
        read_qreasoning(path)


def test_english_text_forms():
    assert english_text({"answer": " A. "}, "w") == "A."
    assert english_text("<summarize>JP</summarize> <translation> EN </translation>", "w") == "EN"
    assert english_text(" ", "w") == "" and english_text(None, "w") == ""
    with pytest.raises(BadRecordError, match="must be a string"):
        english_text(3, "w")


# ---------------------------------------------------------------- DeQA-Score / Q-Insight, conversations, JSON lines

def test_meta_json_scores_and_degradation(tmp_path):
    rows = [{"id": "10004473376.jpg->77.38", "image": "koniq/10004473376.jpg", "gt_score": 77.38,
             "gt_score_norm": 4.4788, "std": 0.5, "conversations": [
                 {"from": "human", "value": "Rate the quality of this image.\n<|image|>"},
                 {"from": "gpt", "value": "The quality of the image is good."}]},
            {"image": "koniq/2.jpg", "gt_score": 3.91176},
            {"image": "dist/x.png", "distortion_class": "Noise", "severity": "Moderate"},
            {"image": "dist/y.png"}]
    path = tmp_path / "train_koniq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(BadRecordError, match="line 4: missing score"):
        read_meta_json(path, dataset="koniq")
    records = by_id(read_meta_json(path, dataset="koniq", image_root=tmp_path / "data", on_bad="skip"))
    first = records["10004473376.jpg"]
    assert first["mos_norm"] == pytest.approx(4.4788) and first["split"] == "train"
    assert first["image"] == str(tmp_path / "data" / "koniq" / "10004473376.jpg")
    assert first["question"] == "Rate the quality of this image." and first["reference"].startswith("The quality")
    assert records["2.jpg"]["mos_norm"] == pytest.approx(1.0)
    assert (records["x.png"]["distortion"], records["x.png"]["severity"]) == ("noise", "moderate")
    assert math.isnan(records["x.png"]["mos"])


def test_conversations_one_record_per_turn_pair(tmp_path):
    rows = [{"id": "q1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nHow is the exposure?"}, {"from": "gpt", "value": "Dark."},
        {"from": "human", "value": "And the focus?"}, {"from": "gpt", "value": "Sharp."}]},
        {"id": "q2", "image": "b.jpg", "conversations": [{"from": "human", "value": "hi"}]}]
    path = tmp_path / "q_instruct.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(BadRecordError, match="item 1: no human turn followed by a gpt turn"):
        read_conversations(path)
    records = by_id(read_conversations(path, on_bad="skip"))
    assert list(records) == ["q1", "q1#1"]
    assert (records["q1"]["question"], records["q1"]["reference"]) == ("How is the exposure?", "Dark.")
    assert records["q1#1"]["question"] == "And the focus?" and records["q1#1"]["image"] == str(tmp_path / "a.jpg")


def test_jsonl_generic_form(tmp_path):
    lines = [json.dumps({"image": "img/a.png", "mos": 3.0, "dataset": "mine", "split": "train", "description": "x"}),
             json.dumps({"image": "img/b.png", "mos": 5.0, "dataset": "mine", "split": "test"}),
             json.dumps({"image": "img/c.png", "mos": 1.0, "dataset": "kadid", "mos_norm": 2.5}),
             "{not json", json.dumps({"image": "img/d.png", "colour": "red"}), json.dumps({"mos": 2.0})]
    path = tmp_path / "index.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRecordError, match="index.jsonl line 4: malformed JSON"):
        read_jsonl(path)
    report = SkipReport()
    records = by_id(read_jsonl(path, on_bad="skip", report=report))
    assert len(report) == 3 and "unknown field(s) ['colour']" in report.entries[1][1]
    assert records["a.png"]["mos_norm"] == pytest.approx(1.0)  # "mine" is not in the table: data min/max 3..5
    assert records["b.png"]["mos_norm"] == pytest.approx(5.0) and records["b.png"]["split"] == "test"
    assert records["c.png"]["mos_norm"] == 2.5 and records["c.png"]["split"] == "all"
    assert records["a.png"]["image"] == str(tmp_path / "img" / "a.png")


# ---------------------------------------------------------------- split files and the registry

def test_split_file_forms(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"train": ["x/1.jpg", "2.jpg"], "test": ["3.jpg"]}))
    (tmp_path / "b.json").write_text(json.dumps({"1.jpg": "Training", "3.jpg": "validation"}))
    write_csv(tmp_path / "c.csv", ["image_name", "set"], [["1.jpg", "training"], ["3.jpg", "test"]])
    assert load_split_file(tmp_path / "a.json") == {"1.jpg": "train", "2.jpg": "train", "3.jpg": "test"}
    assert load_split_file(tmp_path / "b.json") == {"1.jpg": "train", "3.jpg": "val"}
    assert load_split_file(tmp_path / "c.csv") == {"1.jpg": "train", "3.jpg": "test"}
    write_csv(tmp_path / "d.csv", ["file", "fold"], [["1.jpg", "0"]])
    with pytest.raises(LabelFileError, match="needs a name column and a split/set column"):
        load_split_file(tmp_path / "d.csv")


def test_read_source_dispatch(tmp_path):
    assert set(READERS) >= {"koniq", "spaq", "kadid", "live_challenge", "agiqa3k", "csiq", "pipal", "qreasoning",
                            "meta_json", "conversations", "jsonl"}
    koniq_root(tmp_path)
    assert len(read_source("koniq", tmp_path)) == 4
    with pytest.raises(ValueError, match="unknown source kind 'konik'"):
        read_source("konik", tmp_path)


def test_label_files_that_are_not_utf8_name_the_file(tmp_path):
    """Issue 18: a decode error names the file (it ended in a traceback of the codec)."""
    from jaxbiqa.data.sources import read_source
    from jaxbiqa.data.sources.common import LabelFileError

    for kind, name, options in (("jsonl", "labels.jsonl", {}), ("meta_json", "labels.json", {"dataset": "meta"})):
        path = tmp_path / name
        path.write_bytes(b'\xff\xfe[{"image": "a.png"}]')
        with pytest.raises(LabelFileError, match=rf"{path}: not UTF-8 text"):
            read_source(kind, str(path), **options)
