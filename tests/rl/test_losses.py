"""The GRPO loss pieces against direct NumPy transcriptions of the formulas (method.md sections 5-6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbiqa.config import Config, GRPOSection, RolloutSection, SamplingSection
from jaxbiqa.rl import losses

B, C, G = 8, 6, 4


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.1, 4.0, (B, C)).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, (B, C))).astype(np.float32)   # ratios far enough from 1 to clip
    ref = (logp + rng.normal(0, 0.5, (B, C))).astype(np.float32)
    lengths = rng.integers(1, C + 1, B)
    lengths[2] = 0                                                  # one padding row
    mask = (np.arange(C)[None] < lengths[:, None]).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    entropy = rng.uniform(0, 3, (B, C)).astype(np.float32)
    return logp, old, ref, mask, adv, entropy


# ---------------------------------------------------------------- NumPy transcriptions

def np_advantages(r, g, mode, eps=1e-4):
    out = np.empty_like(r, dtype=np.float64)
    for start in range(0, len(r), g):
        group = r[start:start + g].astype(np.float64)
        for i, value in enumerate(group):
            if mode == "grpo":
                out[start + i] = (value - group.mean()) / (group.std(ddof=1) + eps)
            elif mode == "drgrpo":
                out[start + i] = value - group.mean()
            else:  # rloo: minus the mean of the others
                out[start + i] = value - np.delete(group, i).mean()
    return out


def np_kl(logp, ref, kind):
    d = logp.astype(np.float64) - ref
    return {"k1": d, "k2": d ** 2 / 2, "k3": np.exp(ref - logp.astype(np.float64)) - (ref - logp) - 1}[kind]


def np_loss(logp, old, ref, mask, adv, eps, eps_high, beta, kind, agg, max_len):
    ratio = np.exp(logp.astype(np.float64) - old)
    a = adv[:, None].astype(np.float64)
    per = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps_high) * a) + beta * np_kl(logp, ref, kind)
    rows = [b for b in range(B) if mask[b].sum() > 0]
    if agg == "seq_mean_token_mean":
        return np.mean([(per[b] * mask[b]).sum() / mask[b].sum() for b in rows])
    if agg == "token_mean":
        return (per * mask).sum() / mask.sum()
    return (per * mask).sum() / (len(rows) * max_len)


# ---------------------------------------------------------------- tests

def test_completion_mask_stops_after_first_eos():
    tokens = np.array([[5, 7, 1, 9, 1], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5], [1, 4, 4, 4, 4]])
    for eos_ids in (1, [1, 2]):
        expected = np.zeros(tokens.shape, np.int32)
        for b, row in enumerate(tokens):
            for t, token in enumerate(row):
                expected[b, t] = 1
                if token in np.atleast_1d(eos_ids):
                    break
        np.testing.assert_array_equal(np.asarray(losses.completion_mask(tokens, eos_ids)), expected)
    valid = np.ones(tokens.shape, np.int32)
    valid[1, 3:] = 0
    got = np.asarray(losses.completion_mask(tokens, 1, valid))
    np.testing.assert_array_equal(got[1], [1, 1, 1, 0, 0])


@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "rloo"])
def test_group_advantages(mode):
    rewards = np.random.default_rng(1).uniform(0, 3, 12).astype(np.float32)
    rewards[4:8] = 1.5  # a constant group: zero advantage, no division by zero
    got = np.asarray(losses.group_advantages(rewards, G, mode))
    np.testing.assert_allclose(got, np_advantages(rewards, G, mode), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[4:8], 0.0)


def test_group_advantages_reject_bad_groups():
    with pytest.raises(ValueError, match="num_generations=4"):
        losses.group_advantages(np.zeros(6), 4)
    with pytest.raises(ValueError, match="G >= 2"):
        losses.group_advantages(np.zeros(6), 1)
    with pytest.raises(ValueError, match="unknown advantage mode"):
        losses.group_advantages(np.zeros(8), 4, "ppo")


@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_clipped_surrogate_and_clip_indicator(eps_high):
    logp, old, _, _, adv, _ = _inputs()
    loss, clipped = losses.clipped_surrogate(logp, old, adv, 0.2, eps_high)
    high = 0.2 if eps_high is None else eps_high
    ratio = np.exp(logp.astype(np.float64) - old)
    a = adv[:, None]
    np.testing.assert_allclose(np.asarray(loss), -np.minimum(ratio * a, np.clip(ratio, 0.8, 1 + high) * a), rtol=1e-5)
    expected = ((ratio < 0.8) & (a < 0)) | ((ratio > 1 + high) & (a > 0))
    np.testing.assert_array_equal(np.asarray(clipped), expected)
    assert 0 < expected.mean() < 1  # the inputs exercise both branches


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators(kind):
    logp, _, ref, _, _, _ = _inputs()
    np.testing.assert_allclose(np.asarray(losses.kl_penalty(logp, ref, kind)), np_kl(logp, ref, kind),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean", "seq_sum"])
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_grpo_objective_matches_numpy(agg, kind):
    logp, old, ref, mask, adv, entropy = _inputs(2)
    options = GRPOSection(beta=0.04, kl_estimator=kind, aggregation=agg, clip_epsilon_high=0.28)
    terms = losses.grpo_objective(logp, mask, adv, options, old_logp=old, ref_logp=ref, entropy=entropy)
    expected = np_loss(logp, old, ref, mask, adv, 0.2, 0.28, 0.04, kind, agg, C)  # seq_sum: the width C
    np.testing.assert_allclose(float(terms.total / terms.denominator), expected, rtol=1e-5)
    np.testing.assert_allclose(float(losses.finish(terms.metrics["kl"])),
                               (np_kl(logp, ref, kind) * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(losses.finish(terms.metrics["entropy"])),
                               (entropy * mask).sum() / mask.sum(), rtol=1e-5)
    _, clipped = losses.clipped_surrogate(logp, old, adv, 0.2, 0.28)
    np.testing.assert_allclose(float(losses.finish(terms.metrics["clip_fraction"])),
                               (np.asarray(clipped) * mask).sum() / mask.sum(), rtol=1e-6)


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean", "seq_sum"])
def test_sum_denominator_pairs_are_exact_over_micro_batches(agg):
    logp, old, ref, mask, adv, _ = _inputs(3)
    options = GRPOSection(beta=0.1, aggregation=agg)
    full = losses.grpo_objective(logp, mask, adv, options, old_logp=old, ref_logp=ref)
    parts = [losses.grpo_objective(logp[s], mask[s], adv[s], options, old_logp=old[s], ref_logp=ref[s])
             for s in (slice(0, 3), slice(3, 4), slice(4, 8))]  # unequal parts, one with the padding row
    total, den = sum(p.total for p in parts), sum(p.denominator for p in parts)
    np.testing.assert_allclose(float(total / den), float(full.total / full.denominator), rtol=1e-6)
    naive = np.mean([float(p.total / p.denominator) for p in parts])
    assert abs(naive - float(full.total / full.denominator)) > 1e-4  # a mean of means would be wrong


def test_one_update_per_rollout_gradient():
    """old_logp = stop_gradient(logp): ratio 1 and
    d loss / d logp = mask (-A + beta (1 - exp(ref - logp))) / (n_b N)."""
    logp, _, ref, mask, adv, _ = _inputs(4)
    options = GRPOSection(beta=0.04)

    def loss(lp):
        terms = losses.grpo_objective(lp, mask, adv, options, ref_logp=ref)
        return terms.total / terms.denominator

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logp))
    rows = mask.sum(1)
    n_rows = (rows > 0).sum()
    kl = np_kl(logp, ref, "k3")
    per_row = [(-adv[b] * mask[b] + 0.04 * kl[b] * mask[b]).sum() / rows[b] for b in range(B) if rows[b]]
    np.testing.assert_allclose(float(value), np.mean(per_row), rtol=1e-5)
    expected = mask * (-adv[:, None] + 0.04 * (1 - np.exp(ref - logp))) / np.maximum(rows, 1)[:, None] / n_rows
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-7)


def test_errors_name_the_problem():
    logp, old, _, mask, adv, _ = _inputs()
    with pytest.raises(ValueError, match="reference log-probs"):
        losses.grpo_objective(logp, mask, adv, GRPOSection(beta=0.1))
    with pytest.raises(ValueError, match="unknown KL"):
        losses.kl_penalty(logp, old, "k4")
    with pytest.raises(ValueError, match="8 completions"):
        losses.clipped_surrogate(logp, old, adv[:3], 0.2)
    with pytest.raises(ValueError, match=r"rollout.pass1.num_samples \(G"):
        Config(rollout=RolloutSection(pass1=SamplingSection(num_samples=1)))
