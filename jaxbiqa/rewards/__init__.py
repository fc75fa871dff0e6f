"""Rewards for GRPO on image quality: pure Python + numpy (+ rouge-score, scipy), no JAX.

Contract: `fn(completions, batch) -> np.ndarray` (float32, one value per completion), where
`batch` maps record fields (`mos_norm`, `description`, ..., `distortion`, `severity`), repeated
per sample, plus rollout context (`group`, `pass2_completions`). Each reward is built by a
factory of keyword-only parameters; `registry` builds weighted sums from config specs.
"""

from jaxbiqa.data.human_text import HUMAN_FIELDS, human_references
from jaxbiqa.parse import parse_rating, parse_ratings, rating_in_answer, split_caption, tag_content
from jaxbiqa.rewards.base import Batch, RewardFn
from jaxbiqa.rewards.consistency import self_consistency_reward
from jaxbiqa.rewards.degradation import degradation_reward, parse_degradation
from jaxbiqa.rewards.format import format_reward, qinsight_format_reward
from jaxbiqa.rewards.ranking import fidelity, ranking_reward
from jaxbiqa.rewards.reasoning import reasoning_reward
from jaxbiqa.rewards.registry import (
    REWARDS,
    RewardSpec,
    WeightedReward,
    build_reward,
    make_reward,
    reward_params,
    reward_specs,
)
from jaxbiqa.rewards.score import closeness, score_reward

__all__ = [
    "HUMAN_FIELDS",
    "REWARDS",
    "Batch",
    "RewardFn",
    "RewardSpec",
    "WeightedReward",
    "build_reward",
    "closeness",
    "degradation_reward",
    "fidelity",
    "format_reward",
    "human_references",
    "make_reward",
    "parse_degradation",
    "parse_rating",
    "parse_ratings",
    "qinsight_format_reward",
    "ranking_reward",
    "rating_in_answer",
    "reasoning_reward",
    "reward_params",
    "reward_specs",
    "score_reward",
    "self_consistency_reward",
    "split_caption",
    "tag_content",
]
