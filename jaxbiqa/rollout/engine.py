"""The method's two-pass rollout (method.md section 4) on top of the sampler.

Pass 1 samples G completions per image prompt from one shared prefill; pass 2 prompts the policy
with each completion's caption alone (text only) and samples `pass2.num_samples` answers. With
`fused` (the default) both passes and the pass-2 prompt construction run as ONE compiled program
(`pass2.splice_prompts` builds the prompts from the pass-1 tokens on device); otherwise pass 1 is
decoded, cut and re-tokenized on the host between two sampler calls (the reference path).

Rows: pass-1 row `b * G + g` is sample g of prompt b; pass-2 row `r * G2 + j` is sample j of the
pass-2 prompt built from pass-1 row r.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbiqa.config import RolloutSection, SamplingSection
from jaxbiqa.distributed import fetch
from jaxbiqa.models.qwen2_5_vl.rope import text_positions
from jaxbiqa.processing import pad_rows
from jaxbiqa.rollout.batch import PromptBatch
from jaxbiqa.rollout.pass2 import SpliceTables, caption_prompts, splice_prompts, splice_tables
from jaxbiqa.rollout.sampler import Completion, DecodeSpec, Sampler, completion_texts, decode, prefill
from jaxbiqa.rollout.textmatch import token_bytes


class RolloutResult(NamedTuple):
    """Host (numpy) results of one rollout; pass-2 fields are None when `two_pass` is off."""

    pass1: Completion
    pass1_texts: list[str]
    has_caption: np.ndarray | None  # [R1] bool: pass 2 saw a real caption (else its output is to be ignored)
    pass2_input_ids: np.ndarray | None  # [R1, P2] the left-padded pass-2 prompts
    pass2_attention_mask: np.ndarray | None
    pass2: Completion | None
    pass2_texts: list[str] | None


def _prefill(model, prompts: PromptBatch, config: SamplingSection):
    return prefill(model, prompts, config.max_new_tokens, config.num_samples, config.cache_dtype)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("pass1", "pass2", "max_caption"))
def _two_pass_program(graphdef, state, prompts: PromptBatch, key, stops1, stops2, tables: SpliceTables, *,
                      pass1: SamplingSection, pass2: SamplingSection, max_caption: int):
    model = nnx.merge(graphdef, state)
    key1, key2 = jax.random.split(key)
    first, _ = decode(model, _prefill(model, prompts, pass1), key1, stops1, DecodeSpec.of(pass1))
    ids, mask, has_caption = splice_prompts(tables, first.tokens, first.lengths, max_caption, pass2.pad_token_id)
    text_only = PromptBatch(ids, mask, text_positions(mask), jnp.zeros(ids.shape[0], jnp.int32))
    second, _ = decode(model, _prefill(model, text_only, pass2), key2, stops2, DecodeSpec.of(pass2))
    return first, ids, mask, has_caption, second


class Rollout:
    """Both passes for a fixed `RolloutSection` and tokenizer; call with a model, a pass-1 batch and a key.

    vocab: bytes of every token id (`textmatch.token_bytes(tokenizer, model vocab size)`);
    encode / decode: text <-> ids without special tokens added / with them skipped;
    render: caption -> pass-2 prompt text (`Processor.pass2_text`).
    """

    def __init__(self, config: RolloutSection, *, vocab: Sequence[bytes], encode: Callable[[str], list[int]],
                 decode: Callable[[list[int]], str], render: Callable[[str], str],
                 encode_batch: Callable[[list[str]], list[list[int]]] | None = None):
        self.config = config
        self.encode, self.decode, self.render = encode, decode, render
        self.pass1 = Sampler(config.pass1, vocab)
        self.pass2 = Sampler(config.pass2, vocab)
        self.tables = splice_tables(render, encode, vocab, config.caption_until, encode_batch)
        self.max_caption = config.max_caption_tokens or config.pass1.max_new_tokens + self.tables.head_width

    @classmethod
    def from_processor(cls, config: RolloutSection, processor, vocab_size: int) -> "Rollout":
        """From a `jaxbiqa.processing.Processor` (Qwen tokenizer and the method's prompts)."""
        tokenizer = processor.tokenizer

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        return cls(config, vocab=token_bytes(tokenizer, vocab_size), encode=lambda text: encode_batch([text])[0],
                   decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), render=processor.pass2_text,
                   encode_batch=encode_batch)

    def prepare(self, model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> PromptBatch:
        """A pass-1 prompt batch in the pass-1 buckets (e.g. from `Processor.pass1(images)`)."""
        return self.pass1.prepare(model, input_ids, attention_mask, pixel_values, image_grid_thw)

    def __call__(self, model, prompts: PromptBatch, key: jax.Array) -> RolloutResult:
        if not self.config.two_pass:
            first = fetch(self.pass1(model, prompts, key))
            return RolloutResult(first, completion_texts(first, self.decode), None, None, None, None, None)
        if self.config.fused:
            graphdef, state = nnx.split(model)
            first, ids, mask, has_caption, second = fetch(_two_pass_program(
                graphdef, state, prompts, key, self.pass1.stops, self.pass2.stops, self.tables,
                pass1=self.config.pass1, pass2=self.config.pass2, max_caption=self.max_caption))
            texts = completion_texts(first, self.decode)
        else:
            key1, key2 = jax.random.split(key)
            first = fetch(self.pass1(model, prompts, key1))
            texts = completion_texts(first, self.decode)
            rows, has_caption = caption_prompts(texts, self.render, self.encode, self.config.caption_until,
                                                self.max_caption)
            text_only = self.pass2.prepare(model, *pad_rows(rows, self.config.pass2.pad_token_id))
            ids, mask = text_only.input_ids, text_only.attention_mask
            second = fetch(self.pass2(model, text_only, key2))
        return RolloutResult(first, texts, np.asarray(has_caption), np.asarray(ids), np.asarray(mask), second,
                             completion_texts(second, self.decode))
