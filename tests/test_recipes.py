"""Every recipe in configs/ loads and validates; the paper recipes train float32 master weights,
parse ratings as the authors did and sample as their generate call did."""

import math

import numpy as np
import pytest

from jaxbiqa.config import CONFIGS_DIR, bf16_trained_parameters, load_config
from jaxbiqa.rewards import build_reward, reward_specs

RECIPES = sorted(p.stem for p in CONFIGS_DIR.glob("*.py"))
PAPER = ("humaniqa", "qinsight_score")


def test_recipes_exist() -> None:
    assert {"demo_cpu", "humaniqa", "qinsight_score", "visualquality_r1"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_validates(name: str) -> None:
    config = load_config(name)
    assert config.name == name
    build_reward(reward_specs(config.rewards))  # reward names and parameters resolve
    assert not bf16_trained_parameters(config)
    if config.model.lora_rank == 0:  # full fine-tuning: float32 master weights
        assert config.model.param_dtype == "float32"


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_samples_as_the_authors_generate_call(name: str) -> None:
    rollout = load_config(name).rollout
    passes = [rollout.pass1] + ([rollout.pass2] if rollout.two_pass else [])
    for sampling in passes:  # T = 1 with transformers' default top-k 50, top-p 1
        assert (sampling.greedy, sampling.temperature, sampling.top_k, sampling.top_p) == (False, 1.0, 50, 1.0)
    if rollout.two_pass:
        assert rollout.pass2.max_new_tokens == rollout.pass1.max_new_tokens == 1024


ANSWER = '<caption>\nA sharp photo.\n</caption>\n<think>\nLittle noise.\n</think>\n<answer>\n{"rating": 3.42}\n</answer>'


def test_humaniqa_rewards_parse_strictly() -> None:
    reward = build_reward(reward_specs(load_config("humaniqa").rewards))
    cut = ANSWER[: ANSWER.index("</answer>")]  # truncated at the token limit
    completions = [ANSWER, cut, ANSWER, ANSWER, '<answer>{"rating": 7}</answer>']
    pass2 = ['<think>ok</think><answer>{"rating": 3.5}</answer>', ANSWER, '<answer>{"rating": 3.42}',
             '<answer>rating: 3.42</answer>', '<answer>{"rating": 3.42}</answer>']
    batch = {"mos_norm": [3.42, 3.42, 3.42, 3.42, 3.42], "group": [0] * 5, "pass2_completions": pass2,
             **{f: ["a sharp photo"] * 5 for f in ("description", "good_aspect", "bad_aspect")}}
    _, parts = reward(completions, batch)
    cosine = 0.5 * (1 + math.cos(math.pi * 0.08 / 0.35))  # the authors' closeness at d = 0.08
    np.testing.assert_allclose(parts["score"], [1.0, 0.0, 1.0, 1.0, 0.0], atol=1e-6)
    # pass 2 cut before </answer>, or a rating without the JSON key, earns 0 as in their regex
    np.testing.assert_allclose(parts["self_consistency"], [cosine, 1.0, 0.0, 0.0, 1.0], atol=1e-6)
