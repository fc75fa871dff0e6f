"""Score and self-consistency rewards against hand-computed values."""

import math

import numpy as np
import pytest

from jaxbiqa.rewards.consistency import self_consistency_reward
from jaxbiqa.rewards.score import closeness, score_reward


def ans(x: object) -> str:
    return f'<caption>c</caption><think>t</think><answer>{{"rating": {x}}}</answer>'


def test_threshold_kind() -> None:
    texts = [ans(3.2), ans(3.35), ans(3.34), ans(2.66), "no rating"]
    out = score_reward(kind="threshold")(texts, {"mos_norm": [3.0] * 5})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1, 0, 1, 1, 0])
    exact = score_reward(kind="threshold", threshold=0.5)([ans(3.5), ans(3.25)], {"mos_norm": [3.0, 3.0]})
    np.testing.assert_array_equal(exact, [0, 1])  # d = t exactly is not < t


def test_cosine_kind() -> None:
    texts = [ans(3.0), ans(3.175), ans(2.9125), ans(3.35), ans(4.0), ans(7)]
    out = score_reward()(texts, {"mos_norm": np.full(6, 3.0)})
    expected = [1.0, 0.5, 0.5 * (1 + math.cos(math.pi / 4)), 0.0, 0.0, 0.0]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_gaussian_kind_and_threshold_parameter() -> None:
    out = score_reward(kind="gaussian", sigma=0.2)([ans(3.2), ans(3.0), "x"], {"mos_norm": [3.0, 3.0, 3.0]})
    np.testing.assert_allclose(out, [math.exp(-0.5), 1.0, 0.0], atol=1e-6)
    out = score_reward(threshold=1.0)([ans(3.5)], {"mos_norm": [3.0]})
    np.testing.assert_allclose(out, [0.5], atol=1e-6)


def test_closeness_handles_nan() -> None:
    out = closeness(np.array([np.nan, 0.0, -0.175]))
    np.testing.assert_allclose(out, [0.0, 1.0, 0.5], atol=1e-6)


def test_missing_target_and_strict_parser() -> None:
    out = score_reward()([ans(3.0), ans(3.0)], {"mos_norm": [None, float("nan")]})
    np.testing.assert_array_equal(out, [0.0, 0.0])
    text = "<answer>rating: 3.0/5</answer>"
    assert score_reward()([text], {"mos_norm": [3.0]})[0] == 1.0
    assert score_reward(strict=True)([text], {"mos_norm": [3.0]})[0] == 0.0
    assert score_reward(target="mos")([ans(2.0)], {"mos": [2.0]})[0] == 1.0


def test_score_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match="mos_norm"):
        score_reward()([ans(3)], {"mos": [3.0]})
    with pytest.raises(ValueError, match="2 entries for 1 completions"):
        score_reward()([ans(3)], {"mos_norm": [3.0, 4.0]})
    with pytest.raises(ValueError, match=r"'mos_norm'\[1\] is not a number"):
        score_reward()([ans(3), ans(3)], {"mos_norm": [3.0, "high"]})
    with pytest.raises(ValueError, match="kind"):
        score_reward(kind="linear")
    with pytest.raises(ValueError, match="threshold"):
        score_reward(threshold=0.0)


def test_self_consistency_against_target() -> None:
    pass1 = [ans(1.0)] * 5
    pass2 = [ans(3.1), None, "", "garbage", ans(3.0)]
    out = self_consistency_reward()(pass1, {"mos_norm": [3.0] * 5, "pass2_completions": pass2})
    expected = [0.5 * (1 + math.cos(math.pi * 0.1 / 0.35)), 0.0, 0.0, 0.0, 1.0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_self_consistency_against_pass1() -> None:
    pass1 = [ans(3.5), "unparsable", ans(2.0)]
    pass2 = [ans(3.5), ans(3.5), ans(2.175)]
    fn = self_consistency_reward(against="pass1")
    out = fn(pass1, {"mos_norm": [1.0] * 3, "pass2_completions": pass2})
    np.testing.assert_allclose(out, [1.0, 0.0, 0.5], atol=1e-6)
    threshold = self_consistency_reward(against="pass1", kind="threshold")(pass1, {"pass2_completions": pass2})
    np.testing.assert_array_equal(threshold, [1.0, 0.0, 1.0])


def test_self_consistency_errors() -> None:
    with pytest.raises(KeyError, match="pass2_completions"):
        self_consistency_reward()([ans(3)], {"mos_norm": [3.0]})
    with pytest.raises(ValueError, match="against"):
        self_consistency_reward(against="pass2")
