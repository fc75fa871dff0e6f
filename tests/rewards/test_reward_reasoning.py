"""Reasoning (ROUGE-1) reward: hand-computed values and rouge-score called directly."""

import numpy as np
import pytest
from rouge_score.rouge_scorer import RougeScorer

from jaxbiqa.rewards.reasoning import human_references, reasoning_reward

SCORER = RougeScorer(["rouge1"], use_stemmer=False)
BLANK = {"description": " ", "good_aspect": " ", "bad_aspect": " "}


def batch(*samples: dict) -> dict:
    return {k: [s[k] for s in samples] for k in ("description", "good_aspect", "bad_aspect")}


def test_hand_computed_precision_and_recall() -> None:
    # completion tokens: the photo is sharp and bright (6); reference: a bright photo sharp (4); overlap 3
    sample = {"description": "A bright photo", "good_aspect": "sharp", "bad_aspect": " "}
    completion = ["The photo is sharp and bright!"]
    np.testing.assert_allclose(reasoning_reward()(completion, batch(sample)), [0.5])
    np.testing.assert_allclose(reasoning_reward(measure="recall")(completion, batch(sample)), [0.75])
    np.testing.assert_allclose(reasoning_reward(measure="fmeasure")(completion, batch(sample)), [0.6])


@pytest.mark.parametrize("measure", ["precision", "recall", "fmeasure"])
def test_equals_rouge_score_called_directly(measure: str) -> None:
    samples = [
        {"description": "A dog runs on a beach.", "good_aspect": "Warm colours.", "bad_aspect": "Slight blur."},
        {
            "description": {"answer": "A parking lot."},
            "good_aspect": {"answer": "Nostalgic mood."},
            "bad_aspect": {"answer": "The image is tilted."},
        },
        {"description": "City at night", "good_aspect": "neon lights", "bad_aspect": "noisy sky"},
    ]
    completions = [
        "<caption>A dog is running on the beach, warm colours</caption><think>blur</think><answer>3</answer>",
        "The parking lot photo is tilted 🚗 and grey.",
        "",
    ]
    got = reasoning_reward(measure=measure, floor=0.0)(completions, batch(*samples))
    refs = [
        "A dog runs on a beach. Warm colours. Slight blur.",
        "A parking lot. Nostalgic mood. The image is tilted.",
        "City at night neon lights noisy sky",
    ]
    want = [getattr(SCORER.score(r, c)["rouge1"], measure) for r, c in zip(refs, completions, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32


def test_max_over_annotators() -> None:
    sample = {
        "description": ["red flower", "flower"],
        "good_aspect": ["The flowers are in close-up and striking.", "vividly colored"],
        "bad_aspect": ["a little", "The background is dark."],
    }
    assert human_references(sample) == [
        "red flower The flowers are in close-up and striking. a little",
        "flower vividly colored The background is dark.",
    ]
    completion = ["A vividly colored flower on a dark background."]
    got = reasoning_reward(floor=0.0)(completion, batch(sample))
    scores = [SCORER.score(r, completion[0])["rouge1"].precision for r in human_references(sample)]
    assert scores[0] != scores[1]
    np.testing.assert_allclose(got, [max(scores)], rtol=1e-6)


def test_floor_and_missing() -> None:
    human = {"description": "a red flower", "good_aspect": " ", "bad_aspect": " "}
    japanese_only = {"description": "赤い花", "good_aspect": "綺麗", "bad_aspect": None}
    completions = ["completely unrelated words", "a red flower", "anything", "anything"]
    data = batch(human, human, BLANK, japanese_only)
    np.testing.assert_allclose(reasoning_reward()(completions, data), [0.1, 1.0, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(reasoning_reward(floor=0.01, missing=0.0)(completions, data), [0.01, 1.0, 0.0, 0.0])


def test_translation_field_and_fields_choice() -> None:
    sample = {
        "description": "<summarize>パンダ</summarize>  \n<translation>A panda eats bamboo.</translation>  ",
        "good_aspect": "<summarize>x</summarize><translation>Sharp fur.</translation>",
        "bad_aspect": " ",
    }
    assert human_references(sample) == ["A panda eats bamboo. Sharp fur."]
    assert human_references(sample, fields=("good_aspect",)) == ["Sharp fur."]
    out = reasoning_reward(fields=("good_aspect",))(["sharp fur"], {"good_aspect": [sample["good_aspect"]]})
    np.testing.assert_allclose(out, [1.0])


def test_caption_only() -> None:
    sample = {"description": "a red flower", "good_aspect": " ", "bad_aspect": " "}
    full = '<caption>a red flower</caption><think>ugly grey noise everywhere</think><answer>{"rating": 2}</answer>'
    fn = reasoning_reward(text="caption")
    np.testing.assert_allclose(fn([full, "a red flower without tags"], batch(sample, sample)), [1.0, 0.1])
    assert reasoning_reward()([full], batch(sample))[0] < 0.5


def test_bad_human_text_and_parameters() -> None:
    with pytest.raises(ValueError, match=r"batch\[0\] field 'description'"):
        reasoning_reward()(["x"], batch({"description": 3, "good_aspect": " ", "bad_aspect": " "}))
    with pytest.raises(ValueError, match="'answer' key"):
        reasoning_reward()(["x"], batch({"description": {"text": "a"}, "good_aspect": " ", "bad_aspect": " "}))
    with pytest.raises(KeyError, match="bad_aspect"):
        reasoning_reward()(["x"], {"description": ["a"], "good_aspect": ["b"]})
    with pytest.raises(ValueError, match="measure"):
        reasoning_reward(measure="f1")
    with pytest.raises(ValueError, match="text"):
        reasoning_reward(text="think")


def test_authors_join_merges_unpunctuated_fields() -> None:
    # method.md 8.6: "...overseas" + "The space..." -> "overseasthe" in the authors' reference
    sample = {"description": "A trip overseas", "good_aspect": "The space is open.", "bad_aspect": "Noise"}
    assert human_references(sample) == ["A trip overseas The space is open. Noise"]
    assert human_references(sample, join="authors") == ["A trip overseasThe space is open.Noise"]
    completion = ["overseas the space noise"]
    # spaces: all 4 completion tokens are in the reference; the authors' join makes one token
    # "overseasthe" of two ("open.Noise" still splits at the full stop): 2 of 4 match
    np.testing.assert_allclose(reasoning_reward(floor=0.0)(completion, batch(sample)), [1.0])
    authors = reasoning_reward(floor=0.0, join="authors")(completion, batch(sample))
    expected = SCORER.score("A trip overseasThe space is open.Noise", completion[0])["rouge1"].precision
    np.testing.assert_allclose(authors, [expected])
    assert authors[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="join"):
        reasoning_reward(join="comma")
