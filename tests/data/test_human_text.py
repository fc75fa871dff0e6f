"""The human text of a record, read one way for the reasoning reward (one reference per annotator)
and for the evaluation's ROUGE (every annotator's text in one string)."""

import math

import pytest

from jaxbiqa.data.human_text import human_references, human_text

RECORD = {
    "description": {"answer": "A red bike."},
    "good_aspect": "<translation>Sharp focus.</translation> 对焦清晰",
    "bad_aspect": ["Too dark.", {"answer": "Noisy sky."}],
    "instruction": {"answer": "ignored"},
}


def test_one_text_keeps_every_annotator_and_skips_missing_fields():
    assert human_text(RECORD) == "A red bike. Sharp focus. Too dark. Noisy sky."
    assert human_text({"description": {"answer": "Only this."}, "good_aspect": None,
                       "bad_aspect": math.nan}) == "Only this."
    assert human_text({"description": "  "}) == ""


def test_references_are_one_per_annotator_joined_as_asked():
    assert human_references(RECORD) == ["A red bike. Sharp focus. Too dark.", "A red bike. Sharp focus. Noisy sky."]
    assert human_references({"description": "Cat", "bad_aspect": "blur"}, join="authors") == ["Catblur"]
    assert human_references({}) == []


@pytest.mark.parametrize("value,message", [(3, "must be a str"), ({"text": "a"}, "'answer' key"),
                                           ([["a"]], "nested lists")])
def test_bad_values_name_the_record_and_field(value, message):
    for read in (human_text, human_references):
        with pytest.raises(ValueError, match=rf"item 7 field 'good_aspect'.*{message}"):
            read({"good_aspect": value}, where="item 7")
