"""Next-token choice: sampling frequencies match transformers' warper semantics (chi-square), greedy
is argmax, log-probs are the raw policy's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

from jaxbiqa.rollout.logits import sample_tokens, token_logprob, top_k_tokens

sample = jax.jit(sample_tokens, static_argnames=("greedy", "temperature", "top_k", "top_p"))
LOGITS = np.array([2.0, 1.6, 1.1, 0.7, 0.2, -0.4, -1.5], np.float32)
DRAWS = 40_000


def expected_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference: temperature, then keep the top_k best, then the smallest best-first set whose
    mass reaches top_p (probabilities renormalised after each step)."""
    scaled = logits.astype(np.float64) / temperature
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros(len(p), bool)
    keep[order[:top_k or len(p)]] = True
    p = np.where(keep, p, 0.0) / p[keep].sum()
    mass = 0.0
    for i in order:
        if keep[i] and mass >= top_p:
            keep[i] = False
        mass += p[i] if keep[i] else 0.0
    return np.where(keep, p, 0.0) / p[keep].sum()


def draw(temperature=1.0, top_k=0, top_p=1.0, seed=0) -> np.ndarray:
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (DRAWS, len(LOGITS)))
    tokens = sample(logits, jax.random.key(seed), temperature=temperature, top_k=top_k, top_p=top_p)
    return np.bincount(np.asarray(tokens), minlength=len(LOGITS))


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.6, 0, 1.0), (1.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (1.3, 5, 0.9), (0.8, 4, 0.5),
])
def test_sampling_frequencies_match_the_distribution(temperature, top_k, top_p):
    counts = draw(temperature, top_k, top_p)
    expected = expected_distribution(LOGITS, temperature, top_k, top_p)
    kept = expected > 0
    assert counts[~kept].sum() == 0, "a filtered-out token was sampled"
    assert kept.sum() >= 2
    assert chisquare(counts[kept], DRAWS * expected[kept]).pvalue > 1e-3


def test_chi_square_detects_a_wrong_distribution():
    """The check has power: top-p samples are not distributed like the unfiltered softmax."""
    counts = draw(1.0, 0, 0.8)
    unfiltered = expected_distribution(LOGITS, 1.0, 0, 1.0)
    assert chisquare(counts, DRAWS * unfiltered).pvalue < 1e-6


def test_top_p_keeps_the_best_token_and_ties():
    logits = jnp.broadcast_to(jnp.asarray([3.0, 1.0, 1.0, 0.0, -2.0]), (4000, 5))
    assert (np.asarray(sample(logits, jax.random.key(0), top_p=1e-6)) == 0).all()
    # probabilities .75, .10, .10, .04, .01: top-p 0.8 is reached by the first tied token; its twin stays
    drawn = np.bincount(np.asarray(sample(logits, jax.random.key(0), top_p=0.8)), minlength=5)
    assert (drawn[:3] > 0).all() and (drawn[3:] == 0).all()


def test_greedy_is_argmax_and_seed_determines_samples():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((16, 50)), jnp.float32)
    greedy = sample(logits, jax.random.key(0), greedy=True, temperature=0.1, top_k=3)
    np.testing.assert_array_equal(np.asarray(greedy), np.argmax(np.asarray(logits), axis=-1))
    a = sample(logits, jax.random.key(1), top_k=10)
    b = sample(logits, jax.random.key(1), top_k=10)
    c = sample(logits, jax.random.key(2), top_k=10)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (np.asarray(a) != np.asarray(c)).any()


def test_token_logprob_is_the_raw_log_softmax():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 9)).astype(np.float32)
    tokens = np.array([0, 3, 8, 5])
    expected = logits[np.arange(4), tokens] - np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(np.asarray(token_logprob(jnp.asarray(logits), jnp.asarray(tokens))), expected,
                               atol=1e-6)


@pytest.mark.parametrize("vocab, k", [(32000, 50), (5003, 7), (1000, 50), (300, 50)])
def test_top_k_tokens_equal_lax_top_k_ties_included(vocab, k):
    rng = np.random.default_rng(vocab)
    smooth = rng.standard_normal((4, vocab)).astype(np.float32)
    tied = rng.integers(-3, 3, (4, vocab)).astype(np.float32)  # every value shared by many ids
    tied[1, : vocab // 2] = -np.inf
    tied[2] = 0.0
    logits = jnp.asarray(np.concatenate([smooth, tied]))
    values, ids = jax.jit(top_k_tokens, static_argnums=1)(logits, k)
    want_values, want_ids = jax.lax.top_k(logits, k)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))
