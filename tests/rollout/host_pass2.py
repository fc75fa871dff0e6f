"""The tests' oracle for pass 2: what the device splice must build, done on the host.

Decode the pass-1 text, cut it before the marker (`jaxbiqa.parse.split_caption`), render the
pass-2 chat prompt around it and tokenize it; then sample pass 2 from those prompts with the
plain sampler. The engine builds the same prompts inside its one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxbiqa.parse import split_caption
from jaxbiqa.processing import pad_rows
from jaxbiqa.rollout import Rollout, completion_texts, prepare_prompts


def caption_prompts(completions: Sequence[str], render: Callable[[str], str], encode: Callable[[str], list[int]],
                    until: str, max_caption_tokens: int | None = None) -> tuple[list[list[int]], np.ndarray]:
    """Pass-2 prompt ids and `has_caption [R]` of pass-1 texts; a completion without a caption, or
    with one longer than `max_caption_tokens` tokens, gets the empty-caption prompt and False."""
    prompts, flags = [], []
    for text in completions:
        caption = split_caption(text, until=until)
        if caption is not None and max_caption_tokens is not None and len(encode(caption)) > max_caption_tokens:
            caption = None
        flags.append(caption is not None)
        prompts.append(encode(render(caption or "")))
    return prompts, np.asarray(flags, bool)


def host_rollout(rollout: Rollout, model, prompts, key: jax.Array, width: int):
    """(pass-1 completion, texts, has_caption, pass-2 ids, mask, pass-2 completion) of the host path,
    the pass-2 prompts left padded to `width`, keys split as the engine splits them."""
    key1, key2 = jax.random.split(key)
    first = rollout.pass1(model, prompts, key1)
    texts = completion_texts(first, rollout.decode)
    rows, has_caption = caption_prompts(texts, rollout.render, rollout.encode, rollout.splits[0], rollout.max_caption)
    ids, mask = pad_rows(rows, rollout.config.pass2.pad_token_id, width)
    pad = rollout.config.pass2.pad_token_id
    text_only = prepare_prompts(model.config, ids, mask, buckets=(width,), pad_token_id=pad)
    second = rollout.pass2(model, text_only, key2)
    return first, texts, has_caption, np.asarray(text_only.input_ids), np.asarray(text_only.attention_mask), second
