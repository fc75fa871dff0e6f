"""The GRPO objective as small pure functions of arrays (jax.numpy; numpy inputs work too).

Shapes: `B` completions (G consecutive rows per prompt), `C` completion tokens. Per-token arrays
are `[B, C]`, aligned with the completion tokens; `mask [B, C]` is 1 on the tokens that count
(up to and including the first EOS, see `completion_mask`).

Every reduction returns a `(sum, denominator)` pair instead of a mean: summing the pairs of several
micro-batches and dividing once gives exactly the mean over the whole batch, for every
aggregation mode (a per-micro-batch mean of means would not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbiqa.config import Aggregation, Advantage, GRPOSection, KLEstimator

SumCount = tuple[jax.Array, jax.Array]


def completion_mask(tokens: jax.Array, eos_ids: int | Sequence[int], valid: jax.Array | None = None) -> jax.Array:
    """int32 `[B, C]`: 1 on completion tokens up to and including the first EOS (all when none), 0 after.

    `valid [B, C]` (optional) further masks tokens the sampler did not produce (padding). Works on
    numpy (host batches) or jax arrays (built on device).
    """
    xp = jnp if isinstance(tokens, jax.Array) else np
    tokens = xp.asarray(tokens)
    is_eos = xp.isin(tokens, xp.asarray(eos_ids, tokens.dtype).reshape(-1))
    eos_before = xp.cumsum(is_eos, axis=-1) - is_eos  # EOS tokens strictly before each position
    mask = eos_before == 0
    if valid is not None:
        mask = mask & (xp.asarray(valid) > 0)
    return mask.astype(xp.int32)


def group_advantages(rewards: jax.Array, num_generations: int, mode: Advantage = "grpo",
                     epsilon: float = 1e-4) -> jax.Array:
    """float32 `[B]` advantages of `rewards [B]`, groups of `num_generations` consecutive rows.

    grpo: (R - mean) / (std + epsilon), std unbiased (the authors'); drgrpo: R - mean (no std
    scaling); rloo: R minus the mean of the other G - 1 rewards of the group.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or num_generations < 2 or rewards.shape[0] % num_generations:
        raise ValueError(f"group_advantages: rewards of shape {rewards.shape} do not split into groups of "
                         f"num_generations={num_generations} (need a 1-D length divisible by G >= 2)")
    groups = rewards.reshape(-1, num_generations)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if mode == "grpo":
        out = centred / (groups.std(axis=1, ddof=1, keepdims=True) + epsilon)
    elif mode == "drgrpo":
        out = centred
    elif mode == "rloo":
        out = centred * (num_generations / (num_generations - 1))
    else:
        raise ValueError(f"unknown advantage mode {mode!r}; expected grpo, drgrpo or rloo")
    return out.reshape(-1)


def clipped_surrogate(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, epsilon: float,
                      epsilon_high: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-token `-min(r A, clip(r, 1 - eps, 1 + eps_high) A)` with `r = exp(logp - old_logp)`, and
    where the clip is active (`r < 1 - eps` with `A < 0`, or `r > 1 + eps_high` with `A > 0`).

    `advantages` is `[B]` (one per completion) or `[B, C]`.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    adv = _per_token(advantages, logp)
    ratio = jnp.exp(logp - old_logp)
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon, 1.0 + high)
    loss = -jnp.minimum(ratio * adv, clipped_ratio * adv)
    is_clipped = ((ratio < 1.0 - epsilon) & (adv < 0)) | ((ratio > 1.0 + high) & (adv > 0))
    return loss, is_clipped


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: KLEstimator = "k3") -> jax.Array:
    """Per-token estimate of KL(policy || reference) from log-probs of sampled tokens (Schulman's k1/k2/k3)."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator == "k3":
        return jnp.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def aggregate(per_token: jax.Array, mask: jax.Array, mode: Aggregation) -> SumCount:
    """(sum, denominator) whose ratio is the batch loss under `mode`.

    seq_mean_token_mean: mean over completions of each one's token mean (the authors, TRL "grpo");
    token_mean: mean over every token of the batch (DAPO); seq_sum: token sum over completions x
    the completion width (Dr.GRPO's fixed length: the rollout's `max_new_tokens`, the width of its
    token buffer, so it is set in one place). Rows with no valid token are padding and do not count.
    """
    mask = jnp.asarray(mask, per_token.dtype)
    masked = per_token * mask
    tokens = mask.sum(axis=-1)
    rows = (tokens > 0).astype(per_token.dtype)
    if mode == "seq_mean_token_mean":
        return (masked.sum(axis=-1) / jnp.maximum(tokens, 1.0)).sum(), rows.sum()
    if mode == "token_mean":
        return masked.sum(), tokens.sum()
    if mode == "seq_sum":
        return masked.sum(), rows.sum() * per_token.shape[-1]
    raise ValueError(f"unknown aggregation {mode!r}; expected seq_mean_token_mean, token_mean or seq_sum")


def masked_sum_count(values: jax.Array, mask: jax.Array) -> SumCount:
    """(sum, count) of `values` over `mask`: a token mean that stays exact across micro-batches."""
    mask = jnp.asarray(mask, jnp.float32)
    return (jnp.asarray(values, jnp.float32) * mask).sum(), mask.sum()


def finish(pair: SumCount) -> jax.Array:
    """sum / denominator, 0 when nothing counted."""
    total, count = pair
    return jnp.where(count > 0, total / jnp.maximum(count, 1e-12), 0.0)


class LossTerms(NamedTuple):
    total: jax.Array                      # loss sum (differentiable)
    denominator: jax.Array                # what to divide the accumulated sum by
    metrics: Mapping[str, SumCount]       # (sum, count) pairs, token or sequence means


def grpo_objective(logp: jax.Array, mask: jax.Array, advantages: jax.Array, options: GRPOSection, *,
                   old_logp: jax.Array | None = None, ref_logp: jax.Array | None = None,
                   entropy: jax.Array | None = None) -> LossTerms:
    """The clipped GRPO loss with the KL term, aggregated by `options.aggregation`.

    `old_logp` None means one update per rollout: the ratio is `exp(logp - stop_gradient(logp))`
    (value 1, gradient of logp). `ref_logp` is needed when `options.beta > 0`. Metrics: clip
    fraction (token mean), KL (token mean, when a reference is given), entropy (when given).
    """
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    per_token, is_clipped = clipped_surrogate(logp, old_logp, advantages, options.clip_epsilon,
                                              options.clip_epsilon_high)
    metrics = {"clip_fraction": masked_sum_count(is_clipped, mask)}
    if options.beta > 0:
        if ref_logp is None:
            raise ValueError(f"grpo.beta={options.beta} > 0 needs reference log-probs (ref_logp)")
        kl = kl_penalty(logp, ref_logp, options.kl_estimator)
        per_token = per_token + options.beta * kl
        metrics["kl"] = masked_sum_count(jax.lax.stop_gradient(kl), mask)
    elif ref_logp is not None:
        metrics["kl"] = masked_sum_count(jax.lax.stop_gradient(kl_penalty(logp, ref_logp, options.kl_estimator)), mask)
    if entropy is not None:
        metrics["entropy"] = masked_sum_count(jax.lax.stop_gradient(entropy), mask)
    total, denominator = aggregate(per_token, mask, options.aggregation)
    return LossTerms(total, denominator, metrics)


def _per_token(advantages: jax.Array, like: jax.Array) -> jax.Array:
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    if advantages.shape[0] != like.shape[0]:
        raise ValueError(f"advantages of shape {advantages.shape} do not match {like.shape[0]} completions")
    return advantages
