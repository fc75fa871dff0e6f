"""Score reward: how close the parsed rating is to the normalised MOS, d = |rating - mos_norm|.

Kinds (threshold t, default 0.35; unparsable rating or missing target -> 0):
* "threshold": 1 if d < t else 0 (Q-Insight);
* "cosine": 0.5 (1 + cos(pi d / t)) if d < t else 0 (the method);
* "gaussian": exp(-d^2 / (2 sigma^2)), t unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxbiqa.parse import DEFAULT_RANGE, Range, parse_ratings
from jaxbiqa.rewards.base import Batch, RewardFn, float_column

Kind = Literal["threshold", "cosine", "gaussian"]
KINDS: tuple[str, ...] = ("threshold", "cosine", "gaussian")


def check_closeness_params(kind: str, threshold: float, sigma: float, *, reward: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"{reward}: kind must be one of {KINDS}, got {kind!r}")
    if not threshold > 0:
        raise ValueError(f"{reward}: threshold must be > 0, got {threshold!r}")
    if not sigma > 0:
        raise ValueError(f"{reward}: sigma must be > 0, got {sigma!r}")


def closeness(
    distance: np.ndarray, *, kind: Kind = "cosine", threshold: float = 0.35, sigma: float = 0.175
) -> np.ndarray:
    """The reward for each distance (float32 in [0, 1]); NaN distances give 0."""
    d = np.asarray(distance, np.float64)
    valid = np.isfinite(d)
    d = np.where(valid, np.abs(d), np.inf)
    if kind == "threshold":
        r = (d < threshold).astype(np.float64)
    elif kind == "cosine":
        r = np.where(d < threshold, 0.5 * (1.0 + np.cos(np.pi * np.minimum(d, threshold) / threshold)), 0.0)
    elif kind == "gaussian":
        r = np.exp(-np.square(d) / (2.0 * sigma**2))
    else:
        raise ValueError(f"closeness: kind must be one of {KINDS}, got {kind!r}")
    return np.where(valid, r, 0.0).astype(np.float32)


def score_reward(
    *,
    kind: Kind = "cosine",
    threshold: float = 0.35,
    sigma: float = 0.175,
    target: str = "mos_norm",
    strict: bool = False,
    valid_range: Range = DEFAULT_RANGE,
) -> RewardFn:
    """Closeness of each completion's rating to `batch[target]` (see the module doc). Range: [0, 1].

    `strict` / `valid_range` choose the rating parser (`parse.parse_rating`).
    """
    check_closeness_params(kind, threshold, sigma, reward="score_reward")

    def reward(completions: Sequence[str], batch: Batch) -> np.ndarray:
        mos = float_column(batch, target, len(completions), reward="score")
        ratings = parse_ratings(completions, strict=strict, valid_range=valid_range)
        return closeness(ratings - mos, kind=kind, threshold=threshold, sigma=sigma)

    return reward
