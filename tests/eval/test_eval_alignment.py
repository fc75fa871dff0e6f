"""ROUGE-1 of model captions against Q-Reasoning human texts."""

import json

import pytest
from rouge_score import rouge_scorer

from jaxbiqa.eval.alignment import load_human_texts, rouge1_alignment


def test_load_human_texts(tmp_path):
    path = tmp_path / "human.json"
    path.write_text(json.dumps([
        {"image": "a.jpg", "description": {"answer": "A cat."}, "good_aspect": {"answer": "Sharp."},
         "bad_aspect": {"answer": "Dark."}},
        {"image": "b.jpg", "description": " "},  # no text: left out
    ]))
    assert load_human_texts(path) == {"a.jpg": "A cat. Sharp. Dark."}
    path.write_text(json.dumps([{"image": "a.jpg"}, {"image": "a.jpg"}]))
    with pytest.raises(ValueError, match=r"human\.json: record 1: duplicate image a\.jpg"):
        load_human_texts(path)
    path.write_text(json.dumps([{"description": "x"}]))
    with pytest.raises(ValueError, match="record 0: expected an object with a string 'image'"):
        load_human_texts(path)


def test_rouge1_alignment_equals_rouge_score():
    human = {
        "a.jpg": "It shows a red bicycle. The focus is sharp. The sky is too dark.",
        "sub/b.jpg": "A bowl of noodles on a table. Colours are vivid. Slight blur.",
        "c.jpg": "Not predicted.",
    }
    completions = {
        "a.jpg": "<caption>A red bicycle against a wall, sharp focus, dark sky.</caption><think>good</think>",
        "b.jpg": "Noodles in a bowl with vivid colours.<think>fine</think><answer>{}</answer>",  # file-name match
        "d.jpg": "<caption>No human text for this one.</caption>",
        "e.jpg": "garbled",
    }
    result = rouge1_alignment(completions, human)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    a = scorer.score(human["a.jpg"], "A red bicycle against a wall, sharp focus, dark sky.")["rouge1"]
    b = scorer.score(human["sub/b.jpg"], "Noodles in a bowl with vivid colours.")["rouge1"]
    assert result.n == 2 and result.n_no_caption == 0
    assert result.precision == pytest.approx((a.precision + b.precision) / 2)
    assert result.recall == pytest.approx((a.recall + b.recall) / 2)
    assert result.f == pytest.approx((a.fmeasure + b.fmeasure) / 2)


def test_completion_without_caption_scores_zero():
    human = {"a.jpg": "A cat on a sofa.", "b.jpg": "A dog."}
    result = rouge1_alignment({"a.jpg": "<caption>A cat on a sofa.</caption>", "b.jpg": "no layout at all"}, human)
    assert result.n == 2 and result.n_no_caption == 1
    assert result.precision == pytest.approx(0.5) and result.f == pytest.approx(0.5)


def test_ambiguous_file_names_are_not_matched():
    human = {"x/a.jpg": "one", "y/a.jpg": "two"}
    assert rouge1_alignment({"a.jpg": "<caption>one</caption>"}, human).n == 0
    assert rouge1_alignment({"x/a.jpg": "<caption>one</caption>"}, human).precision == 1.0
