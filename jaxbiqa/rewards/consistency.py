"""Self-consistency reward: the score function applied to the text-only pass-2 rating.

`batch["pass2_completions"]` holds one pass-2 completion per pass-1 completion, None or "" where
pass 2 was skipped (caption not split out); such samples get 0, as do unparsable ratings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxbiqa.parse import DEFAULT_RANGE, Range, parse_ratings
from jaxbiqa.rewards.base import Batch, RewardFn, column, float_column
from jaxbiqa.rewards.score import Kind, check_closeness_params, closeness


def self_consistency_reward(
    *,
    against: Literal["target", "pass1"] = "target",
    kind: Kind = "cosine",
    threshold: float = 0.35,
    sigma: float = 0.175,
    target: str = "mos_norm",
    pass2_key: str = "pass2_completions",
    strict: bool = False,
    valid_range: Range = DEFAULT_RANGE,
) -> RewardFn:
    """Closeness (`score.closeness`) of the pass-2 rating to `batch[target]` (the method) or, with
    `against="pass1"`, to the pass-1 rating of the same sample. Range: [0, 1].
    """
    check_closeness_params(kind, threshold, sigma, reward="self_consistency_reward")
    if against not in ("target", "pass1"):
        raise ValueError(f"self_consistency_reward: against must be 'target' or 'pass1', got {against!r}")

    def reward(completions: Sequence[str], batch: Batch) -> np.ndarray:
        n = len(completions)
        pass2 = column(batch, pass2_key, n, reward="self_consistency")
        rating2 = parse_ratings(pass2, strict=strict, valid_range=valid_range)
        if against == "target":
            reference = float_column(batch, target, n, reward="self_consistency")
        else:
            reference = parse_ratings(completions, strict=strict, valid_range=valid_range)
        return closeness(rating2 - reference, kind=kind, threshold=threshold, sigma=sigma)

    return reward
