"""Pass-2 prompts from pass-1 completions: the caption alone, as a text-only prompt.

`splice_prompts` runs inside the compiled rollout: it finds the marker (`<think>`: caption only;
`<answer>`: caption + think) in the pass-1 tokens with `textmatch` and copies the caption's tokens
verbatim between the template's prefix and suffix tokens, left padded to a static length, so
pass 1 and pass 2 run as one program. It builds the prompts the host would (the tests' oracle:
decode the pass-1 text, cut it before the marker, render the pass-2 chat prompt, tokenize).

The caption follows `jaxbiqa.parse.split_caption`: a completion without the marker, with only
whitespace before it, or (here) with a caption longer than the static maximum has none: it is
flagged `has_caption=False` and gets the prompt of an empty caption, whose pass-2 output the
caller ignores (the method then gives it reward 0).

Tokenization at the seams. The device path keeps the model's own caption tokens; the host oracle
re-tokenizes the text. Where BPE merges across a seam the ids can differ while the text is the
same. The device path handles the seams that matter for the method's template: the prefix ends in
"described as " and every caption starts with "<caption>", which Qwen writes as " <" + "caption";
so the prefix is tokenized without its trailing space and the space is merged into the caption's
first token when the vocabulary has that token (else it stays a separate " "). A marker that
starts inside a token (`><think>` is `><` `think` `>`) keeps the token's part before the marker,
re-tokenized on the host for every such token. The remaining differences (a caption whose own
tokens are not the canonical tokenization of its text, or a merge between the caption's last
character and the suffix's first, e.g. ">,") leave the decoded prompt text identical. Special
tokens generated inside a caption (rare) stay in the device prompt; the host text drops them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbiqa.rollout.textmatch import StringMatcher, build_matcher, first_match

# stands in for the caption when the template is split into prefix and suffix
_SLOT = "\x00caption-slot\x00"


class SpliceTables(NamedTuple):
    """Host-built constants of the device path (a pytree of arrays; see `splice_tables`)."""

    prefix: jax.Array  # [Lp] template tokens before the caption (without a trailing space)
    prefix_space: jax.Array  # bool scalar: the template has a space right before the caption
    space: jax.Array  # int32 scalar: the id of " "
    spaced: jax.Array  # [vocab] id of " " + token's text when that is one token, else -1
    suffix: jax.Array  # [2, Ls] template tokens after the caption: plain, and after the space (empty caption)
    suffix_length: jax.Array  # [2]
    marker: StringMatcher  # the `<until>` tag
    token_length: jax.Array  # [vocab] bytes per token
    blank: jax.Array  # [vocab] bool: the token's text is whitespace (or empty)
    head_key: jax.Array  # [K, 2] (token, byte offset) where the tag can start inside a token
    head_ids: jax.Array  # [K, H] tokens of that token's text before the offset
    head_length: jax.Array  # [K]
    head_blank: jax.Array  # [K] bool: that text is whitespace

    @property
    def head_width(self) -> int:
        return self.head_ids.shape[1]

    def prompt_length(self, max_caption: int) -> int:
        """Static length of a spliced prompt: prefix, space, caption slots, suffix."""
        return self.prefix.shape[0] + 1 + max_caption + self.suffix.shape[1]


def _blank(text: bytes) -> bool:
    try:
        return not text.decode().strip()
    except UnicodeDecodeError:  # part of a character
        return False


def _heads(vocab: Sequence[bytes], marker: bytes, encode: Callable[[str], list[int]]):
    """(token, offset) -> text of the token before `offset`, for every offset > 0 at which the
    marker can start inside the token (the rest of the token is a prefix of the marker or holds it)."""
    keys, heads = [], []
    for token, text in enumerate(vocab):
        offset = text.find(marker[:1], 1)
        while offset > 0:
            rest = text[offset:]
            if marker.startswith(rest) or rest.startswith(marker):
                try:
                    heads.append(text[:offset].decode())
                    keys.append((token, offset))
                except UnicodeDecodeError:  # cut inside a character: not text on its own
                    pass
            offset = text.find(marker[:1], offset + 1)
    return keys, heads


def _spaced(vocab: Sequence[bytes], encode_batch: Callable[[list[str]], list[list[int]]]) -> np.ndarray:
    """Per token, the id of " " + its text when the tokenizer writes that as a single token, else -1."""
    out = np.full(len(vocab), -1, np.int32)
    known = set(vocab)
    index, texts = [], []
    for token, text in enumerate(vocab):
        if text and b" " + text in known:  # only then can it be one token; the tokenizer decides
            try:
                texts.append(" " + text.decode())
                index.append(token)
            except UnicodeDecodeError:
                pass
    for token, ids in zip(index, encode_batch(texts)):
        if len(ids) == 1:
            out[token] = ids[0]
    return out


def splice_tables(render: Callable[[str], str], encode: Callable[[str], list[int]], vocab: Sequence[bytes],
                  until: str, encode_batch: Callable[[list[str]], list[list[int]]] | None = None) -> SpliceTables:
    """The device path's constants for the pass-2 template `render` and the tag `<until>`.

    `vocab` holds the bytes of every token id (`textmatch.token_bytes`); `encode_batch` (default:
    `encode` per text) tokenizes many texts at once.
    """
    text = render(_SLOT)
    if text.count(_SLOT) != 1:
        raise ValueError(f"the pass-2 template must place the caption exactly once, got {text!r}")
    before, after = text.split(_SLOT)
    prefix_space = before.endswith(" ")
    if prefix_space:
        before = before[:-1]
    space = encode(" ") if prefix_space else [0]
    if len(space) != 1:
        raise ValueError(f"the tokenizer writes ' ' as {space}, not one token")
    suffixes = [encode(after), encode(" " + after if prefix_space else after)]
    width = max(map(len, suffixes))
    suffix = np.zeros((2, width), np.int32)
    for row, ids in enumerate(suffixes):
        suffix[row, :len(ids)] = ids
    if until not in ("think", "answer"):
        raise ValueError(f"pass-2 captions end before <think> or <answer>: until must be 'think' or 'answer', "
                         f"got {until!r}")
    marker = f"<{until}>"
    keys, heads = _heads(vocab, marker.encode(), encode)
    head_tokens = [encode(h) for h in heads]
    rows = max(1, len(keys))  # one unmatchable row when no token can hold the tag's start
    head_key = np.full((rows, 2), -1, np.int32)
    head_ids = np.zeros((rows, max([1, *map(len, head_tokens)])), np.int32)
    head_length = np.zeros(rows, np.int32)
    head_blank = np.zeros(rows, bool)
    for row, (key, text, ids) in enumerate(zip(keys, heads, head_tokens)):
        head_key[row], head_ids[row, :len(ids)], head_length[row] = key, ids, len(ids)
        head_blank[row] = not text.strip()
    spaced = (_spaced(vocab, encode_batch or (lambda texts: [encode(t) for t in texts])) if prefix_space
              else np.full(len(vocab), -1, np.int32))
    arrays = dict(prefix=np.asarray(encode(before), np.int32), prefix_space=np.asarray(prefix_space),
                  space=np.asarray(space[0], np.int32), spaced=spaced, suffix=suffix,
                  suffix_length=np.asarray(list(map(len, suffixes)), np.int32),
                  marker=StringMatcher(*build_matcher(vocab, marker)),
                  token_length=np.fromiter(map(len, vocab), np.int32, len(vocab)),
                  blank=np.fromiter(map(_blank, vocab), bool, len(vocab)),
                  head_key=head_key, head_ids=head_ids, head_length=head_length, head_blank=head_blank)
    return jax.tree.map(jnp.asarray, SpliceTables(**arrays))


def _take(rows: jax.Array, index: jax.Array) -> jax.Array:
    """rows[r, index[r, ...]] for a batch of rows."""
    return jnp.take_along_axis(rows, index, axis=1)


def splice_prompts(tables: SpliceTables, tokens: jax.Array, lengths: jax.Array, max_caption: int,
                   pad_token_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Device path: left-padded pass-2 `input_ids`, `attention_mask` `[R, tables.prompt_length(max_caption)]`
    and `has_caption [R]` from pass-1 `tokens [R, N]` with `lengths [R]`."""
    r, n = tokens.shape
    valid = jnp.arange(n)[None] < lengths[:, None]
    start = first_match(tables.marker, tables.token_length, tokens, valid)
    size = jnp.where(valid, tables.token_length[tokens], 0)
    end = jnp.cumsum(size, axis=1)
    whole = jnp.sum(valid & (end <= start[:, None]), axis=1)  # tokens entirely before the marker
    at = jnp.minimum(whole, n - 1)[:, None]
    offset = start - (_take(end, at) - _take(size, at))[:, 0]  # where the marker starts in token `whole`
    hit = (tables.head_key[None, :, 0] == _take(tokens, at)) & (tables.head_key[None, :, 1] == offset[:, None])
    k = jnp.argmax(hit, axis=1)
    head_length = jnp.where(offset > 0, tables.head_length[k], 0)
    caption_length = whole + head_length
    # like split_caption: a caption of whitespace only is no caption
    blank = (jnp.all(tables.blank[tokens] | (jnp.arange(n)[None] >= whole[:, None]), axis=1)
             & ((offset == 0) | tables.head_blank[k]))
    has_caption = ((start >= 0) & ((offset == 0) | jnp.any(hit, axis=1)) & ~blank
                   & (caption_length <= max_caption))
    caption_length = jnp.where(has_caption, caption_length, 0)

    slot = jnp.broadcast_to(jnp.arange(max_caption)[None], (r, max_caption))
    caption = jnp.where(slot < whole[:, None], _take(tokens, jnp.minimum(slot, n - 1)),
                        _take(tables.head_ids[k], jnp.clip(slot - whole[:, None], 0, tables.head_width - 1)))
    caption_valid = slot < caption_length[:, None]
    nonempty = caption_length > 0
    merged_first = tables.spaced[caption[:, 0]]
    merged = tables.prefix_space & nonempty & (merged_first >= 0)
    caption = caption.at[:, 0].set(jnp.where(merged, merged_first, caption[:, 0]))
    space_valid = tables.prefix_space & nonempty & ~merged
    which = (tables.prefix_space & ~nonempty).astype(jnp.int32)
    suffix = tables.suffix[which]
    suffix_valid = jnp.arange(suffix.shape[1])[None] < tables.suffix_length[which][:, None]

    source = jnp.concatenate([jnp.broadcast_to(tables.prefix[None], (r, tables.prefix.shape[0])),
                              jnp.broadcast_to(tables.space, (r, 1)), caption, suffix], axis=1)
    keep = jnp.concatenate([jnp.ones((r, tables.prefix.shape[0]), bool), space_valid[:, None], caption_valid,
                            suffix_valid], axis=1)
    width = source.shape[1]
    # left padding: the j-th kept element lands `kept elements from j to the end` before the right edge
    after = jnp.flip(jnp.cumsum(jnp.flip(keep, 1), axis=1), 1)
    dest = jnp.where(keep, width - after, width)
    rows = jnp.arange(r)[:, None]
    ids = jnp.full((r, width), pad_token_id, jnp.int32).at[rows, dest].set(source.astype(jnp.int32), mode="drop")
    mask = jnp.zeros((r, width), jnp.int32).at[rows, dest].set(1, mode="drop")
    return ids, mask, has_caption
