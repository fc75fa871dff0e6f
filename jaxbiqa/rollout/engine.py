"""The method's two-pass rollout (method.md section 4) on top of the sampler: one engine for
training and evaluation.

Pass 1 samples G completions per image prompt from one shared prefill; pass 2 prompts the policy,
text only, with the pass-1 text before each split point and samples `pass2.num_samples` answers.
The split points are data: training splits at `<think>` (the caption alone, `caption_until`);
evaluation at `<think>` and at `<answer>` (caption + think, method.md 8.3), both pass-2 prompt
sets decoded together. Both passes and the pass-2 prompt construction run as ONE compiled
program: `pass2.splice_prompts` builds the prompts from the pass-1 tokens on device.

Pass 2 is sized to its captions: the spliced prompts have the static width of the caption budget
(`max_caption_tokens` + template) and the program prefills only their last `w` columns, `w` the
smallest of `pass2.prompt_buckets` (and that full width) holding the batch's longest prompt: one
`lax.switch` branch per width, so no bucket compiles again. The cache keeps the full width's
capacity, so one decode loop serves every bucket (blocked attention never reads the unused slots).

Rows: pass-1 row `b * G + g` is sample g of prompt b; pass-2 prompt row `s * R1 + r` is split s of
pass-1 row r (R1 pass-1 rows), and pass-2 row `p * G2 + j` is sample j of pass-2 prompt row p.
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
from jaxbiqa.rollout.batch import PromptBatch
from jaxbiqa.rollout.pass2 import SpliceTables, splice_prompts, splice_tables
from jaxbiqa.rollout.sampler import Completion, DecodeSpec, Sampler, completion_texts, decode, prefill
from jaxbiqa.rollout.textmatch import token_bytes

Split = str  # the tag before which pass 1's text is cut: "think" (caption) or "answer" (caption + think)


class DeviceRollout(NamedTuple):
    """The program's outputs where it left them (device arrays, global on a mesh): what update rows
    are built from on device, without a trip through the host."""

    pass1: Completion
    pass2_input_ids: jax.Array | None
    pass2_attention_mask: jax.Array | None
    has_caption: jax.Array | None
    pass2: Completion | None
    image_features: jax.Array | None  # [image tokens, hidden] of the pass-1 images (`Prefilled.image_features`)


class RolloutResult(NamedTuple):
    """Host (numpy) results of one rollout, and the same on device (`device`); pass-2 fields are
    None when `two_pass` is off."""

    pass1: Completion
    pass1_texts: list[str]
    has_caption: np.ndarray | None  # [S * R1] bool: pass 2 saw a real split-out text (else ignore its output)
    pass2_input_ids: np.ndarray | None  # [S * R1, P2] the left-padded pass-2 prompts
    pass2_attention_mask: np.ndarray | None
    pass2: Completion | None
    pass2_texts: list[str] | None
    device: DeviceRollout

    @property
    def interrupted(self) -> bool:
        """Whether a stop request (`jaxbiqa.interrupts`) ended a decode loop early: the rows are unfinished."""
        return bool(self.pass1.interrupted) or (self.pass2 is not None and bool(self.pass2.interrupted))

    def split_texts(self, split: int) -> tuple[list[str], np.ndarray]:
        """(pass-2 texts, has_caption) of split point `split` (its index in `Rollout.splits`)."""
        rows = len(self.pass1_texts)
        samples = len(self.pass2_texts) // len(self.has_caption)  # pass2.num_samples
        texts = self.pass2_texts[split * rows * samples:(split + 1) * rows * samples]
        return texts, self.has_caption[split * rows:(split + 1) * rows]


def _prefill(model, prompts: PromptBatch, config: SamplingSection):
    return prefill(model, prompts, config.max_new_tokens, config.num_samples, config.cache_dtype)


def bucket_widths(buckets: Sequence[int], width: int) -> tuple[int, ...]:
    """The prefill widths of text-only prompts left padded to `width`: the buckets below it, and it."""
    return tuple(sorted({b for b in buckets if b < width} | {width}))


def bucketed_prefill(model, prompts: PromptBatch, config: SamplingSection, widths: Sequence[int]):
    """`prefill` of text-only, left-padded `prompts` over only their last `w` columns, `w` the
    smallest of `widths` that holds every row's real tokens (`lax.switch`: one compiled branch per
    width); the cache has the capacity of the full width either way."""
    graphdef, state = nnx.split(model)
    full = prompts.length
    capacity = full + config.max_new_tokens

    def branch(w: int):
        def run():
            cut = PromptBatch(prompts.input_ids[:, full - w:], prompts.attention_mask[:, full - w:],
                              prompts.positions[:, :, full - w:], prompts.rope_deltas)
            # a fresh module per branch: NNX rejects Variables traced outside the branch
            return prefill(nnx.merge(graphdef, state, copy=True), cut, capacity - w, config.num_samples,
                           config.cache_dtype)
        return run

    if len(widths) == 1:
        return branch(full)()
    longest = jnp.max(jnp.sum(prompts.attention_mask, axis=1))
    index = jnp.searchsorted(jnp.asarray(widths), longest)  # the first width >= longest
    return jax.lax.switch(index, [branch(w) for w in widths])


@functools.partial(jax.jit, static_argnums=0, static_argnames=("pass1", "pass2", "max_caption"))
def _two_pass_program(graphdef, state, prompts: PromptBatch, key, stops1, stops2, splits: tuple[SpliceTables, ...],
                      *, pass1: SamplingSection, pass2: SamplingSection, max_caption: int):
    model = nnx.merge(graphdef, state)
    key1, key2 = jax.random.split(key)
    prefilled = _prefill(model, prompts, pass1)
    first, _ = decode(model, prefilled, key1, stops1, DecodeSpec.of(pass1))
    if not splits:
        return first, None, None, None, None, prefilled.image_features
    spliced = [splice_prompts(tables, first.tokens, first.lengths, max_caption, pass2.pad_token_id)
               for tables in splits]
    ids, mask, has_caption = (jnp.concatenate(parts) for parts in zip(*spliced))
    text_only = PromptBatch(ids, mask, text_positions(mask), jnp.zeros(ids.shape[0], jnp.int32))
    widths = bucket_widths(pass2.prompt_buckets, ids.shape[1])
    second, _ = decode(model, bucketed_prefill(model, text_only, pass2, widths), key2, stops2, DecodeSpec.of(pass2))
    return first, ids, mask, has_caption, second, prefilled.image_features


class Rollout:
    """Both passes for a fixed `RolloutSection`, tokenizer and split points; call with a model, a
    pass-1 batch and a key.

    vocab: bytes of every token id (`textmatch.token_bytes(tokenizer, model vocab size)`);
    encode / decode: text <-> ids without special tokens added / with them skipped;
    render: caption -> pass-2 prompt text (`Processor.pass2_text`);
    splits: pass 2's split points (default: `config.caption_until` alone; none without `two_pass`).
    """

    def __init__(self, config: RolloutSection, *, vocab: Sequence[bytes], encode: Callable[[str], list[int]],
                 decode: Callable[[list[int]], str], render: Callable[[str], str],
                 encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
                 splits: Sequence[Split] | None = None):
        self.config = config
        self.encode, self.decode, self.render = encode, decode, render
        self.splits = tuple(splits if splits is not None else (config.caption_until,)) if config.two_pass else ()
        self.pass1 = Sampler(config.pass1, vocab)
        self.pass2 = Sampler(config.pass2, vocab)
        self.tables = tuple(splice_tables(render, encode, vocab, until, encode_batch) for until in self.splits)
        head = max((t.head_width for t in self.tables), default=0)
        self.max_caption = config.max_caption_tokens or config.pass1.max_new_tokens + head

    @classmethod
    def from_processor(cls, config: RolloutSection, processor, vocab_size: int,
                       splits: Sequence[Split] | None = None) -> "Rollout":
        """From a `jaxbiqa.processing.Processor` (Qwen tokenizer and the method's prompts)."""
        tokenizer = processor.tokenizer
        for name, sampling in (("pass1", config.pass1), ("pass2", config.pass2)):
            outside = [i for i in (sampling.pad_token_id, *sampling.eos_token_ids) if not 0 <= i < vocab_size]
            if outside:
                raise ValueError(f"rollout.{name}: token ids {outside} (pad_token_id / eos_token_ids) are outside the "
                                 f"model's vocabulary of {vocab_size}; set them for this tokenizer "
                                 f"(e.g. --set rollout.{name}.pad_token_id=...)")

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        return cls(config, vocab=token_bytes(tokenizer, vocab_size), encode=lambda text: encode_batch([text])[0],
                   decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), render=processor.pass2_text,
                   encode_batch=encode_batch, splits=splits)

    @property
    def pass2_width(self) -> int:
        """The static width of a spliced pass-2 prompt."""
        return self.tables[0].prompt_length(self.max_caption)

    def prepare(self, model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> PromptBatch:
        """A pass-1 prompt batch in the pass-1 buckets (e.g. from `Processor.pass1(images)`)."""
        return self.pass1.prepare(model, input_ids, attention_mask, pixel_values, image_grid_thw)

    def __call__(self, model, prompts: PromptBatch, key: jax.Array) -> RolloutResult:
        graphdef, state = nnx.split(model)
        device = DeviceRollout(*_two_pass_program(
            graphdef, state, prompts, key, self.pass1.stops, self.pass2.stops, self.tables,
            pass1=self.config.pass1, pass2=self.config.pass2, max_caption=self.max_caption))
        first, ids, mask, has_caption, second = fetch(tuple(device)[:5])
        texts = completion_texts(first, self.decode)
        if second is None:
            return RolloutResult(first, texts, None, None, None, None, None, device)
        return RolloutResult(first, texts, np.asarray(has_caption), np.asarray(ids), np.asarray(mask), second,
                             completion_texts(second, self.decode), device)

    @staticmethod
    def compile_count() -> int:
        """Compiled variants of the two-pass program so far (one per batch shape, bucket and settings)."""
        return _two_pass_program._cache_size()
