"""Choosing the next token from float32 logits `[R, vocab]`: greedy, temperature, top-k, top-p.

The filters follow transformers' logits warpers, in their order: temperature, then top-k, then
top-p over the renormalised survivors (the smallest best-first set whose probability reaches
`top_p`; a token tied with the last one kept stays too). With top-k on, the draw happens among
the k best tokens (exactly k: among tokens tied with the k-th value the lowest ids win, where
transformers would keep them all), so neither a full-vocabulary sort nor full-vocabulary random
numbers run per step. Draws are Gumbel-max (`jax.random.categorical`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _nucleus(best: jax.Array, top_p: float) -> jax.Array:
    """The value of the last token in the top-p set `[..., 1]`, from values sorted in descending order."""
    probs = jax.nn.softmax(best, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the strictly better tokens
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: the best token always stays
    return jnp.take_along_axis(best, kept - 1, axis=-1)


def top_k_tokens(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(x, k)` of `x [R, V]`, the same values and ids (ties to the lower id), in two small steps.

    The vocabulary is cut into chunks; the k best tokens lie in the k chunks with the best maxima
    (a token outside them is beaten by those k maxima), so one top-k over the chunk maxima and one
    over those chunks' tokens replace the full-vocabulary top-k, which XLA runs as a single-threaded
    partial sort per row on CPU."""
    rows, vocab = x.shape
    chunk = 2 ** round(math.log2(math.sqrt(vocab / k)))  # balances the two top-k widths
    if chunk < 4:
        return jax.lax.top_k(x, k)
    # padding ranks after every real token, ties included
    chunks = jnp.pad(x, ((0, 0), (0, -vocab % chunk)), constant_values=-jnp.inf).reshape(rows, -1, chunk)
    _, best = jax.lax.top_k(jnp.max(chunks, axis=-1), k)
    best = jnp.sort(best, axis=-1)  # candidates in id order, so ties still go to the lower id
    candidates = jnp.take_along_axis(chunks, best[:, :, None], axis=1).reshape(rows, k * chunk)
    values, index = jax.lax.top_k(candidates, k)
    return values, jnp.take_along_axis(best, index // chunk, axis=1) * chunk + index % chunk


def sample_tokens(logits: jax.Array, key: jax.Array, *, greedy: bool = False, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """One token id per row `[R]` int32: argmax when `greedy`, else a draw from the filtered distribution."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = logits.astype(jnp.float32) / temperature
    if 0 < top_k < x.shape[-1]:
        best, index = top_k_tokens(x, top_k)
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
