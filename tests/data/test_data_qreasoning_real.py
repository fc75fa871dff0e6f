"""The Q-Reasoning reader on the authors' released files (skips without ../shared/data)."""

import math

import pytest

from jaxbiqa.data.records import TEXT_FIELDS
from jaxbiqa.data.sources import read_qreasoning


def has_text(record: dict) -> bool:
    return any(record[f] for f in TEXT_FIELDS)


@pytest.mark.parametrize("name,count,split", [("human_test.json", 1014, "test"),
                                              ("cot_reasoning_test.json", 1013, "test"),
                                              ("filted_data_human_eng.json", 1495, "train")])
def test_annotation_files_counts(shared_data, name, count, split):
    records = read_qreasoning(shared_data / "q-reasoning" / name)
    assert len(records) == count
    assert all(has_text(r) and r["split"] == split and r["dataset"] == "qreasoning" for r in records)
    assert all(math.isnan(r["mos"]) for r in records)
    assert not any("<translation>" in r["description"] or "<summarize>" in r["description"] for r in records)


def test_answer_form_text(shared_data):
    records = {r["id"]: r for r in read_qreasoning(shared_data / "q-reasoning" / "human_test.json")}
    assert records["05984.jpg"]["description"] == "It shows a parking lot area with asphalt pavement."
    assert records["05984.jpg"]["quality"] == pytest.approx(1.3333333333333333)


def test_mixed_cot_is_the_koniq_training_list(shared_data):
    records = read_qreasoning(shared_data / "q-reasoning" / "mixed_cot.json")
    assert len(records) == 7058 and {r["dataset"] for r in records} == {"koniq"}
    annotated = [r for r in records if has_text(r)]
    assert len(annotated) == 482
    for r in records:  # the file's normalized_score is the KonIQ formula of the MOS it carries
        assert r["mos_norm"] == pytest.approx(1 + 4 * (r["mos"] - 3.91176) / (88.38889 - 3.91176), abs=1e-6)
    assert all(0 <= r["quality"] <= 5 for r in annotated)   # the human rating, not the MOS
    assert all(math.isnan(r["quality"]) for r in records if not has_text(r))


def test_constrained_file_matches_mixed_cot(shared_data):
    constrained = read_qreasoning(shared_data / "q-reasoning" / "koniq_cot_constrain.json")
    mixed = {r["id"]: r for r in read_qreasoning(shared_data / "q-reasoning" / "mixed_cot.json")}
    assert len(constrained) == 482
    for r in constrained:
        assert mixed[r["id"]]["mos"] == pytest.approx(r["mos"]) and mixed[r["id"]]["description"] == r["description"]
