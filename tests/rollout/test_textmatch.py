"""String matching over token bytes: the per-token automaton tables agree with `str.find` on the
decoded text, for any split of the text into tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbiqa.rollout.textmatch import StringMatcher, advance, build_matcher, first_match

ALPHABET = b"ab<>/"
step = jax.jit(advance)


def random_vocab(rng, size=60):
    """Short tokens over a small alphabet (so matches are frequent), one empty (special) token."""
    vocab = [bytes(rng.choice(list(ALPHABET), rng.integers(1, 5)).tolist()) for _ in range(size - 1)]
    return vocab + [b""]


def device(matcher):
    return StringMatcher(*map(jnp.asarray, matcher))


@pytest.mark.parametrize("pattern", ["ab", "aab", "b/a", "<a>", "/b>"])
def test_advance_finds_the_string_when_the_text_first_contains_it(pattern):
    rng = np.random.default_rng(len(pattern))
    vocab = random_vocab(rng)
    matcher = device(build_matcher(vocab, pattern))
    tokens = rng.integers(0, len(vocab), (32, 40))
    state = jnp.zeros(32, jnp.int32)
    found_at = np.full(32, -1)
    for j in range(tokens.shape[1]):
        state = step(matcher, state, jnp.asarray(tokens[:, j]))
        newly = (np.asarray(state) == matcher.length) & (found_at < 0)
        found_at[newly] = j
    for row in range(32):
        texts = [b"".join(vocab[t] for t in tokens[row, :j + 1]) for j in range(tokens.shape[1])]
        expected = next((j for j, text in enumerate(texts) if pattern.encode() in text), -1)
        assert found_at[row] == expected, row
    assert (found_at >= 0).any() and (found_at < 0).any()


@pytest.mark.parametrize("pattern", ["a<", "<ab>", "bb"])
def test_first_match_gives_the_byte_offset_in_the_valid_tokens(pattern):
    rng = np.random.default_rng(7)
    vocab = random_vocab(rng)
    matcher = device(build_matcher(vocab, pattern))
    tokens = rng.integers(0, len(vocab), (40, 16))
    lengths = rng.integers(0, 17, 40)
    valid = np.arange(16)[None] < lengths[:, None]
    token_length = jnp.asarray([len(v) for v in vocab], jnp.int32)
    start = np.asarray(first_match(matcher, token_length, jnp.asarray(tokens), jnp.asarray(valid)))
    for row in range(40):
        text = b"".join(vocab[t] for t in tokens[row, :lengths[row]])
        assert start[row] == text.find(pattern.encode()), row


def test_tables_handle_long_tokens_and_multibyte_text():
    vocab = ["é<thi".encode(), b"nk>", "<think> déjà".encode(), b"x" * 40, b""]
    table = build_matcher(vocab, "<think>")
    assert table.next_state.shape == (5, 7)
    # from state 0: token 0 ends with 4 bytes of the tag; token 2 holds it (completes at byte 7)
    assert table.next_state[0, 0] == 4 and table.match_end[0, 0] == 0
    assert table.match_end[2, 0] == 7 and table.next_state[2, 0] == 7
    assert table.match_end[1, 4] == 3  # "nk>" completes the tag after "<thi"
    assert (table.next_state[3] == 0).all() and (table.next_state[4] == np.arange(7)).all()
    with pytest.raises(ValueError, match="empty"):
        build_matcher(vocab, "")
