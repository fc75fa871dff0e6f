"""Find a string in the text of generated tokens, on device, whatever the tokenization.

A BPE tokenizer writes the same text with different tokens depending on the context: `<think>` is
`<th` `ink` `>` alone, `<th` `ink` `>\\n` before a newline and `><` `think` `>` after a `>`. So
matching token-id sequences misses stop strings and pass-2 markers. Instead, the string's
Knuth-Morris-Pratt automaton over bytes is run once per vocabulary entry on the host: for every
token and automaton state, the state after the token's bytes and the byte at which the match
completes. On device, one table lookup per generated token then advances the match exactly as if
the decoded text were scanned byte by byte.

Token text follows `tokenizer.decode(..., skip_special_tokens=True)`: special tokens have no bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def token_bytes(tokenizer, vocab_size: int | None = None) -> list[bytes]:
    """The bytes each id decodes to (special tokens and ids past the tokenizer: empty), for a
    byte-level BPE tokenizer such as Qwen's; `vocab_size` pads the list to the model's vocabulary."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    added = tokenizer.added_tokens_decoder
    size = len(tokenizer)
    out = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        if i in special:
            out.append(b"")
        elif i in added:
            out.append(added[i].content.encode())
        else:
            try:
                out.append(bytes(to_byte[c] for c in piece))
            except KeyError:
                raise ValueError(f"token {i} ({piece!r}) is not byte-level BPE: token_bytes needs a byte-level "
                                 f"tokenizer (or pass the byte strings yourself)") from None
    if vocab_size is not None:
        if vocab_size < size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {size} tokens")
        out += [b""] * (vocab_size - size)
    return out


class StringMatcher(NamedTuple):
    """Per-token transition tables of one string's automaton (a pytree of arrays).

    States 0..m-1 count the bytes of the string matched so far; m (the number of its bytes) means
    found and is absorbing. `next_state[t, s]` is the state after token t from state s;
    `match_end[t, s]` the 1-based byte of token t at which the match completes from s, else 0.
    """

    next_state: jax.Array  # [vocab, m] int32
    match_end: jax.Array  # [vocab, m] int32

    @property
    def length(self) -> int:
        """Bytes in the string (the accepting state)."""
        return self.next_state.shape[-1]


def _automaton(pattern: bytes) -> np.ndarray:
    """KMP automaton `[m + 1, 256]`: next state for each state and byte; state m absorbs."""
    m = len(pattern)
    dfa = np.zeros((m + 1, 256), np.int32)
    dfa[0, pattern[0]] = 1
    fallback = 0
    for j in range(1, m):
        dfa[j] = dfa[fallback]
        dfa[j, pattern[j]] = j + 1
        fallback = dfa[fallback, pattern[j]]
    dfa[m] = m
    return dfa


def build_matcher(tokens: Sequence[bytes], text: str) -> StringMatcher:
    """Tables for finding `text` in the bytes of `tokens` (one byte string per token id), as numpy."""
    pattern = text.encode()
    if not pattern:
        raise ValueError("cannot match an empty string")
    m, dfa = len(pattern), _automaton(pattern)
    lengths = np.fromiter((len(t) for t in tokens), np.int64, len(tokens))
    order = np.argsort(-lengths, kind="stable")  # longest first: the tokens still running are a prefix
    data = np.zeros((len(tokens), int(lengths.max(initial=0))), np.uint8)
    for row, i in enumerate(order):
        data[row, :lengths[i]] = np.frombuffer(tokens[i], np.uint8)
    state = np.tile(np.arange(m, dtype=np.int32), (len(tokens), 1))
    end = np.zeros_like(state)
    sorted_lengths = lengths[order]
    for p in range(data.shape[1]):
        n = int(np.searchsorted(-sorted_lengths, -p, side="left"))  # rows with length > p
        before = state[:n]
        after = dfa[before, data[:n, p, None]]
        end[:n][(after == m) & (before < m)] = p + 1
        state[:n] = after
    next_state, match_end = np.empty_like(state), np.empty_like(end)
    next_state[order], match_end[order] = state, end
    return StringMatcher(next_state, match_end)


def advance(matcher: StringMatcher, state: jax.Array, tokens: jax.Array) -> jax.Array:
    """States `[R]` after appending `tokens [R]`; `state == matcher.length` once the string was seen."""
    found = state >= matcher.length
    step = matcher.next_state[tokens, jnp.minimum(state, matcher.length - 1)]
    return jnp.where(found, matcher.length, step)


def first_match(matcher: StringMatcher, token_length: jax.Array, tokens: jax.Array,
                valid: jax.Array) -> jax.Array:
    """Byte offset `[R]` where the string first starts in the text of each row's valid tokens, -1 if absent.

    tokens, valid: `[R, N]`; token_length: `[vocab]` bytes per token id. Scans the tokens in order.
    """
    m = matcher.length

    def step(carry, column):
        state, offset, start = carry
        token, ok = column
        end = matcher.match_end[token, jnp.minimum(state, m - 1)]
        hit = ok & (start < 0) & (state < m) & (end > 0)
        start = jnp.where(hit, offset + end - m, start)
        state = jnp.where(ok, advance(matcher, state, token), state)
        offset = offset + jnp.where(ok, token_length[token], 0)
        return (state, offset, start), None

    r = tokens.shape[0]
    init = (jnp.zeros(r, jnp.int32), jnp.zeros(r, jnp.int32), jnp.full(r, -1, jnp.int32))
    (_, _, start), _ = jax.lax.scan(step, init, (tokens.T, valid.T))
    return start
