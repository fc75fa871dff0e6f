"""Registry, specs and the weighted sum."""

import subprocess
import sys

import numpy as np
import pytest

from jaxbiqa.config import load_config
from jaxbiqa.rewards import (
    REWARDS,
    RewardSpec,
    build_reward,
    make_reward,
    reasoning_reward,
    reward_params,
    reward_specs,
    score_reward,
    self_consistency_reward,
)

TEXTS = [
    '<caption>A red flower.</caption>\n<think>Sharp.</think>\n<answer>{"rating": 3.1}</answer>',
    '<caption>A grey wall.</caption>\n<think>Blurry.</think>\n<answer>{"rating": 2.0}</answer>',
    "garbage",
    '<think>t</think><answer>{"rating": 4.4}</answer>',
]
BATCH = {
    "mos_norm": np.array([3.0, 3.0, 4.5, 4.5]),
    "group": np.array([0, 0, 1, 1]),
    "description": ["a red flower", "a red flower", " ", " "],
    "good_aspect": ["sharp", "sharp", " ", " "],
    "bad_aspect": [" ", " ", " ", " "],
    "pass2_completions": ['<answer>{"rating": 3.0}</answer>', None, "", '<answer>{"rating": 4.5}</answer>'],
    "distortion": ["blur"] * 4,
    "severity": ["slight"] * 4,
}


def test_registered_names() -> None:
    names = {"format", "qinsight_format", "score", "self_consistency", "reasoning", "ranking", "degradation"}
    assert names <= set(REWARDS)


def test_method_rewards_sum_their_components() -> None:
    fn = build_reward(reward_specs(load_config("humaniqa").rewards))
    total, parts = fn(TEXTS, BATCH)
    assert fn.labels == ("score", "self_consistency", "reasoning")
    assert total.dtype == np.float32 and total.shape == (4,)
    strict = dict(strict=True, valid_range=None)  # the authors' parse (method.md 8.7)
    np.testing.assert_allclose(parts["score"], score_reward(**strict)(TEXTS, BATCH))
    np.testing.assert_allclose(parts["self_consistency"], self_consistency_reward(**strict)(TEXTS, BATCH))
    np.testing.assert_allclose(parts["reasoning"], reasoning_reward()(TEXTS, BATCH))
    np.testing.assert_allclose(total, sum(parts.values()), rtol=1e-6)


def test_weights_mappings_and_repeated_names() -> None:
    specs = [
        {"name": "score", "weight": 2.0, "kwargs": {"kind": "threshold"}},
        RewardSpec("score", 0.5),
        RewardSpec("format", 1.0, {"value": 0.5}),
    ]
    fn = build_reward(specs)
    total, parts = fn(TEXTS, BATCH)
    assert fn.labels == ("score", "score_2", "format")
    np.testing.assert_allclose(parts["score"], [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(parts["format"], [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(total, 2.0 * parts["score"] + 0.5 * parts["score_2"] + parts["format"], rtol=1e-6)
    assert "score*2" in repr(fn)


@pytest.mark.parametrize("recipe", ["humaniqa", "qinsight_score", "visualquality_r1"])
def test_recipe_rewards_build_and_run(recipe: str) -> None:
    specs = reward_specs(load_config(recipe, ["rewards.weights.format=1.0"]).rewards)
    total, parts = build_reward(specs)(TEXTS, BATCH)
    assert total.shape == (4,) and set(parts) == {s.name for s in specs}
    assert "format" in parts


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown reward 'acc'.*'degradation'.*'score'"):
        build_reward([RewardSpec("acc")])
    with pytest.raises(TypeError, match=r"no parameter\(s\) \['tresh'\]; valid parameters: \['kind', 'threshold'"):
        make_reward("score", tresh=0.3)
    with pytest.raises(ValueError, match="may have"):
        build_reward([{"name": "score", "weights": 1.0}])
    with pytest.raises(ValueError, match="may have"):
        build_reward([{"weight": 1.0}])
    with pytest.raises(ValueError, match="finite"):
        build_reward([RewardSpec("score", float("nan"))])
    with pytest.raises(TypeError, match="RewardSpec or a mapping"):
        build_reward(["score"])
    with pytest.raises(ValueError, match="at least one"):
        build_reward([])


def test_reward_params_lists_factory_keywords() -> None:
    assert reward_params("reasoning") == ("measure", "text", "fields", "floor", "missing", "join")
    assert make_reward("score", kind="gaussian", sigma=0.1)(TEXTS[:1], {"mos_norm": [3.1]})[0] == 1.0


def test_rewards_do_not_import_jax() -> None:
    code = "import sys, jaxbiqa.rewards; sys.exit('jax' in sys.modules or 'flax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
