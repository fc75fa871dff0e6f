"""Property tests: the parsers never raise, and every reward keeps its documented range,
returning float32 with one value per completion."""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxbiqa.rewards import (
    REWARDS,
    make_reward,
    parse_degradation,
    parse_rating,
    split_caption,
    tag_content,
)

PIECES = [
    "<caption>",
    "</caption>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<ANSWER>",
    '"rating"',
    "rating",
    ":",
    "=",
    "/",
    "/5",
    "{",
    "}",
    '"',
    "'",
    " ",
    "\n",
    "3.5",
    "-2",
    "7",
    "0",
    "1",
    "5",
    ".",
    "NaN",
    "inf",
    "1e9",
    "blur",
    "slightly",
    "null",
    "distortion_class",
    "severity",
    "日本語",
    "🌸",
    "\x00",
]
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10, 10).map(str),
    st.decimals(-10, 10, allow_nan=False, places=3).map(str),
)
tag_soup = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=30).map("".join)
layouts = st.builds(
    lambda pre, cap, think, num, post: (
        f'{pre}<caption>{cap}</caption><think>{think}</think><answer>{{"rating": {num}}}</answer>{post}'
    ),
    st.text(max_size=10),
    st.text(max_size=20),
    st.text(max_size=20),
    numbers,
    st.text(max_size=10),
)
completions = st.one_of(st.text(), tag_soup, layouts)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), tag_soup, layouts, st.none(), st.integers()))
def test_parsers_never_raise(text: object) -> None:
    for strict in (False, True):
        value = parse_rating(text, strict=strict)
        assert math.isnan(value) or 1.0 <= value <= 5.0
        assert math.isnan(value) or math.isfinite(parse_rating(text, strict=strict, valid_range=None))
    for tag in ("caption", "think", "answer"):
        content = tag_content(text, tag)
        assert content is None or isinstance(content, str)
    for until in ("think", "answer"):
        caption = split_caption(text, until=until)
        assert caption is None or (isinstance(text, str) and text.startswith(caption))
    cls, sev = parse_degradation(text)
    assert cls in (None, "none", "noise", "compression", "blur", "darken")
    assert sev in (None, "none", "slight", "moderate", "obvious", "serious", "catastrophic")


@st.composite
def batches(draw):
    n_groups = draw(st.integers(1, 4))
    g = draw(st.integers(1, 4))
    texts = draw(st.lists(completions, min_size=n_groups * g, max_size=n_groups * g))
    n = len(texts)
    mos = draw(st.lists(st.floats(1, 5), min_size=n_groups, max_size=n_groups))
    human = st.one_of(st.just(" "), st.text(max_size=30), st.lists(st.text(max_size=15), min_size=1, max_size=3))
    groups = np.repeat(np.arange(n_groups), g)
    batch = {
        "mos_norm": np.asarray(mos)[groups],
        "group": groups,
        "pass2_completions": draw(st.lists(st.one_of(st.none(), completions), min_size=n, max_size=n)),
        "description": draw(st.lists(human, min_size=n, max_size=n)),
        "good_aspect": draw(st.lists(human, min_size=n, max_size=n)),
        "bad_aspect": draw(st.lists(human, min_size=n, max_size=n)),
        "distortion": draw(st.lists(st.sampled_from([None, "noise", "blur", "darken"]), min_size=n, max_size=n)),
        "severity": draw(st.lists(st.sampled_from([None, "slight", "catastrophic"]), min_size=n, max_size=n)),
    }
    return texts, batch


# Documented ranges, with default parameters.
RANGES = {
    "format": (0.0, 0.5),
    "qinsight_format": (0.0, 1.0),
    "score": (0.0, 1.0),
    "self_consistency": (0.0, 1.0),
    "reasoning": (0.1, 1.0),
    "ranking": (0.0, 1.0 + 2e-3),
    "degradation": (0.0, 1.0),
}
ALLOWED_VALUES = {"format": {0.0, 0.5}, "qinsight_format": {0.0, 1.0}, "degradation": {0.0, 0.25, 1.0}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_rewards_stay_in_range(data) -> None:
    texts, batch = data
    assert set(RANGES) == set(REWARDS)
    for name, (lo, hi) in RANGES.items():
        out = make_reward(name)(texts, batch)
        assert out.dtype == np.float32 and out.shape == (len(texts),), name
        assert np.all((out >= lo) & (out <= hi)), (name, out)
        if name in ALLOWED_VALUES:
            assert set(out.tolist()) <= ALLOWED_VALUES[name], (name, out)
