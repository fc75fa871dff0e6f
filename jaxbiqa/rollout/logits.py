"""Choosing the next token from float32 logits `[R, vocab]`: greedy, temperature, top-k, top-p.

The filters follow transformers' logits warpers, in their order: temperature, then top-k, then
top-p over the renormalised survivors (the smallest best-first set whose probability reaches
`top_p`; a token tied with the last one kept stays too). With top-k on, the draw happens among
the k candidates of `lax.top_k` (exactly k: among tokens tied with the k-th value the lowest
ids win, where transformers would keep them all), so neither a full-vocabulary sort nor
full-vocabulary random numbers run per step. Draws are Gumbel-max (`jax.random.categorical`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _nucleus(best: jax.Array, top_p: float) -> jax.Array:
    """The value of the last token in the top-p set `[..., 1]`, from values sorted in descending order."""
    probs = jax.nn.softmax(best, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the strictly better tokens
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: the best token always stays
    return jnp.take_along_axis(best, kept - 1, axis=-1)


def sample_tokens(logits: jax.Array, key: jax.Array, *, greedy: bool = False, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """One token id per row `[R]` int32: argmax when `greedy`, else a draw from the filtered distribution."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = logits.astype(jnp.float32) / temperature
    if 0 < top_k < x.shape[-1]:
        best, index = jax.lax.top_k(x, top_k)
        if top_p < 1.0:
            best = jnp.where(best < _nucleus(best, top_p), -jnp.inf, best)
        choice = jax.random.categorical(key, best, axis=-1)
        return jnp.take_along_axis(index, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    if top_p < 1.0:
        x = jnp.where(x < _nucleus(-jnp.sort(-x, axis=-1), top_p), -jnp.inf, x)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(token) `[R]` under the raw policy (log-softmax of the unfiltered logits, temperature 1)."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)
