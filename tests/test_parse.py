"""Rating parser, tag extraction and caption split: hand-written cases, strict and tolerant."""

import math

import numpy as np
import pytest

from jaxbiqa.parse import caption_text, parse_rating, parse_ratings, rating_in_answer, split_caption, tag_content

RELEASED = (
    "<caption>\nA stone carving.\n</caption>\n\n<think>\nWell focused.\n</think>\n\n"
    '<answer>\n{\n  "rating": 3.97\n}\n</answer>'
)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize(
    ("text", "tolerant", "strict"),
    [
        (RELEASED, 3.97, 3.97),
        ('<answer>{"rating": 3.42}</answer>', 3.42, 3.42),
        ('<answer>{"rating": 1}</answer>', 1.0, 1.0),  # range ends are inclusive
        ('<answer>{"rating": 5.00}</answer>', 5.0, 5.0),
        ("The picture is fine, I rate it highly.", math.nan, math.nan),  # no answer tag, no key
        ('no tags at all {"rating": 3.1}', 3.1, math.nan),  # a bare key counts only when tolerant
        ('<answer>{"rating": 2.0}</answer> then <answer>{"rating": 4.5}</answer>', 4.5, 2.0),
        ('<answer>{"rating": 3}</answer> <answer>done</answer>', 3.0, 3.0),  # last block holding a number
        ('<answer>{"rating": 7}</answer>', math.nan, math.nan),  # out of [1, 5]
        ('<answer>{"rating": 0.5}</answer>', math.nan, math.nan),
        ('<answer>{"rating": -2}</answer>', math.nan, math.nan),
        ('<answer>{"rating": NaN}</answer>', math.nan, math.nan),
        ('<answer>{"rating": NaN, "confidence": 3}</answer>', math.nan, math.nan),  # key wins over other numbers
        ("", math.nan, math.nan),
        ("<answer></answer>", math.nan, math.nan),
        ('<caption>赤い花の写真 🌸✨</caption><think>とても綺麗</think><answer>{"rating": 4.1}</answer>', 4.1, 4.1),
        ("<answer>rating: 3.2/5</answer>", 3.2, math.nan),
        ("<answer>rating: 7/10</answer>", math.nan, math.nan),  # other scales are ambiguous
        ("<answer>3.42</answer>", 3.42, math.nan),
        ("<answer>I would give it 4 out of 5.</answer>", 4.0, math.nan),
        ('<think>ok</think>\n<answer>\n{"rating": 3.3', 3.3, math.nan),  # unclosed final answer
        ('<answer>{"rating": "3.8"}</answer>', 3.8, math.nan),
        ("<answer>{'rating': 2.5}</answer>", 2.5, math.nan),
        ("<answer>Rating = 4</answer>", 4.0, math.nan),
        ('<ANSWER>{"rating": 2.2}</ANSWER>', 2.2, math.nan),
        ('<answer>{"rating": 3.42.}</answer>', 3.42, math.nan),  # the authors' float() fails here
        ('<answer>{"rating": .}</answer>', math.nan, math.nan),
    ],
)
def test_parse_rating_cases(text: str, tolerant: float, strict: float) -> None:
    assert same(parse_rating(text), tolerant), parse_rating(text)
    assert same(parse_rating(text, strict=True), strict), parse_rating(text, strict=True)


def test_range_is_configurable() -> None:
    seven = '<answer>{"rating": 7}</answer>'
    assert parse_rating(seven, valid_range=None) == 7.0
    assert parse_rating(seven, valid_range=(0.0, 10.0)) == 7.0
    assert math.isnan(parse_rating('<answer>{"rating": 3}</answer>', valid_range=(4.0, 5.0)))
    assert parse_rating('<answer>{"rating": -2}</answer>', valid_range=None) == -2.0
    # the authors' regex has no sign, so strict mode never reads a negative rating
    assert math.isnan(parse_rating('<answer>{"rating": -2}</answer>', strict=True, valid_range=None))


@pytest.mark.parametrize("value", [None, 3.5, b'<answer>{"rating": 3}</answer>', ["x"], object()])
def test_non_strings_give_nan(value: object) -> None:
    assert math.isnan(parse_rating(value))
    assert math.isnan(parse_rating(value, strict=True))
    assert tag_content(value, "answer") is None
    assert split_caption(value) is None


def test_parse_ratings_vectorises() -> None:
    out = parse_ratings(['<answer>{"rating": 2}</answer>', None, "x"])
    assert out.dtype == np.float64 and out.shape == (3,)
    assert out[0] == 2.0 and np.isnan(out[1:]).all()


def test_rating_in_answer_reads_one_block_content() -> None:
    assert rating_in_answer('\n{"rating": 3.5}\n') == 3.5
    assert math.isnan(rating_in_answer("3.5", strict=True))  # strict needs the "rating" key
    assert rating_in_answer("3.5") == 3.5
    assert math.isnan(rating_in_answer('{"rating": 9}'))


def test_tag_content() -> None:
    text = "<think> a </think> x <think>b</think>"
    assert tag_content(text, "think") == "a"
    assert tag_content(text, "think", last=True) == "b"
    assert tag_content(text, "caption") is None
    assert tag_content("<caption>open only", "caption") is None


def test_split_caption() -> None:
    text = '<caption>\nA cat.\n</caption>\n<think>\nsharp\n</think>\n<answer>{"rating": 4}</answer>'
    assert split_caption(text) == "<caption>\nA cat.\n</caption>\n"
    assert split_caption(text, until="answer") == "<caption>\nA cat.\n</caption>\n<think>\nsharp\n</think>\n"
    assert split_caption("<caption>no think tag</caption>") is None
    assert split_caption("<think>starts with reasoning</think>") is None
    assert split_caption("  \n<think>x</think>") is None
    with pytest.raises(ValueError, match="until"):
        split_caption(text, until="caption")


def test_caption_text_is_the_caption_block_else_the_text_before_think():
    assert caption_text("<caption>\n A sharp photo.\n</caption>\n<think>ok</think>") == "A sharp photo."
    assert caption_text("A dark photo of a cat.\n<think>noisy</think><answer>{}</answer>") == "A dark photo of a cat."
    assert caption_text('<answer>{"rating": 3}</answer>') is None
    assert caption_text("  \n<think>nothing before</think>") is None
