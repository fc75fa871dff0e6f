"""VisualQuality-R1 fidelity (ranking) reward over a batch of groups (method.md section 6).

Image i has samples s_ij (its group), mean mu_i and unbiased variance var_i over them. Against
every other image z of the batch:
    p = Phi((s_ij - mu_z) / sqrt(var_i + var_z + eps_var)),  g = 1, 0.5, 0 as mos_i >, =, < mos_z,
    r_ij = mean_z [ sqrt(p g + eps_sqrt) + sqrt((1 - p)(1 - g) + eps_sqrt) ].

Choices where the formula is silent:
* an unparsable sample gets 0 and is left out of its group's mean and variance;
* a group with a single parsable sample has variance 0; a group with none is no comparator;
* with no comparator (a batch of one image, or every other group unparsable) the reward is 0,
  which carries no advantage within a group anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr

from jaxbiqa.parse import DEFAULT_RANGE, Range, parse_ratings
from jaxbiqa.rewards.base import Batch, RewardFn, column, float_column


def fidelity(
    ratings: np.ndarray, groups: np.ndarray, mos: np.ndarray, *, eps_var: float = 1e-6, eps_sqrt: float = 1e-6
) -> np.ndarray:
    """The fidelity reward per sample (float32) from ratings (NaN = unparsable), group ids and
    the per-sample MOS (constant within a group). Range: [0, 1 + 2 sqrt(eps_sqrt)]."""
    ratings, groups, mos = np.asarray(ratings, np.float64), np.asarray(groups), np.asarray(mos, np.float64)
    if not ratings.ndim == 1 or groups.shape != ratings.shape or mos.shape != ratings.shape:
        raise ValueError(
            f"fidelity: need 1-D ratings, groups, mos of one length, got {ratings.shape}, {groups.shape}, {mos.shape}"
        )
    ids, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = len(ids)
    valid = np.isfinite(ratings)

    counts = np.bincount(inverse, weights=valid, minlength=m)
    sums = np.bincount(inverse, weights=np.where(valid, ratings, 0.0), minlength=m)
    has = counts > 0
    mu = np.divide(sums, counts, out=np.zeros(m), where=has)
    dev2 = np.where(valid, (np.where(valid, ratings, 0.0) - mu[inverse]) ** 2, 0.0)
    var = np.divide(np.bincount(inverse, weights=dev2, minlength=m), counts - 1, out=np.zeros(m), where=counts > 1)

    group_mos = np.full(m, np.nan)
    group_mos[inverse] = mos
    if not np.allclose(group_mos[inverse], mos, rtol=0.0, atol=1e-9, equal_nan=True):
        raise ValueError("ranking reward: the target differs between samples of one group")

    # [n, m]: sample j (of image i = inverse[j]) against image z.
    own = inverse[:, None]
    p = ndtr((ratings[:, None] - mu[None, :]) / np.sqrt(var[own] + var[None, :] + eps_var))
    g = np.sign(group_mos[own] - group_mos[None, :]) * 0.5 + 0.5
    terms = np.sqrt(p * g + eps_sqrt) + np.sqrt((1.0 - p) * (1.0 - g) + eps_sqrt)
    use = has[None, :] & (np.arange(m)[None, :] != own) & valid[:, None]
    n_use = use.sum(axis=1)
    total = np.where(use, terms, 0.0).sum(axis=1)
    return np.divide(total, n_use, out=np.zeros(len(ratings)), where=n_use > 0).astype(np.float32)


def ranking_reward(
    *,
    target: str = "mos_norm",
    group_key: str = "group",
    eps_var: float = 1e-6,
    eps_sqrt: float = 1e-6,
    strict: bool = False,
    valid_range: Range = DEFAULT_RANGE,
) -> RewardFn:
    """Fidelity of each sample's rating to the batch's MOS ordering (see the module doc).
    Needs `batch[group_key]` (the prompt each sample belongs to) and `batch[target]`.
    Range: [0, 1 + 2 sqrt(eps_sqrt)]."""
    if not (eps_var > 0 and eps_sqrt >= 0):
        raise ValueError(f"ranking_reward: need eps_var > 0 and eps_sqrt >= 0, got {eps_var!r}, {eps_sqrt!r}")

    def reward(completions: Sequence[str], batch: Batch) -> np.ndarray:
        n = len(completions)
        groups = np.asarray(column(batch, group_key, n, reward="ranking"))
        mos = float_column(batch, target, n, reward="ranking")
        if n and np.isnan(mos).any():
            where = np.flatnonzero(np.isnan(mos))[:8].tolist()
            raise ValueError(f"ranking reward: batch field {target!r} has NaN at {where}")
        ratings = parse_ratings(completions, strict=strict, valid_range=valid_range)
        return fidelity(ratings, groups, mos, eps_var=eps_var, eps_sqrt=eps_sqrt)

    return reward
