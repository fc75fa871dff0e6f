"""The compiled sampler: prefill once per prompt, then a KV-cached `lax.while_loop` decode.

* Prefill (one jitted program): encodes the images, runs the left-padded prompts into a fresh KV
  cache of `bucket + max_new_tokens` slots (its dtype from the config) and keeps only the last
  position's logits; no `[B, T, vocab]` array is built. With G = `num_samples` > 1 the cache, the
  last logits and the next positions are then repeated G times (rows `b * G + g`), so each image
  is encoded and each prompt prefilled once for its G samples.
* Decode (one jitted program, the prefill state donated so the cache is updated in place): a
  `lax.while_loop` that samples a token per row, records its log-probability under the raw policy,
  appends it to the cache and stops when every row has ended (an EOS id, or a stop string
  completed in the decoded text) or after `max_new_tokens`. No host round trip per token; only the
  current step's `[R, vocab]` logits are live.
* Positions: a generated token's M-RoPE position is the prompt's rope delta plus its index among
  the row's valid tokens (text-only prompts have delta 0), the same in all three streams.
* Randomness: step i draws with `fold_in(key, i)`; equal keys give equal tokens, on one device or
  sharded (threefry is partitionable).

The log-probs are those of the sampled tokens under the unmodified policy (temperature 1, no
top-k / top-p): what the GRPO ratio `exp(logp - logp_old)` needs, whatever the sampling settings.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from jaxbiqa import interrupts
from jaxbiqa.config import SamplingSection
from jaxbiqa.models.qwen2_5_vl.text import KVCache, init_cache, repeat_cache
from jaxbiqa.rollout.batch import PromptBatch, prepare_prompts
from jaxbiqa.rollout.logits import sample_tokens, token_logprob
from jaxbiqa.rollout.textmatch import StringMatcher, advance, build_matcher, token_bytes
from jaxbiqa.sharding import constrain


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """What a compiled decode loop depends on (the static part of a `SamplingSection`)."""

    max_new_tokens: int
    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    stop_poll_steps: int

    @classmethod
    def of(cls, config: SamplingSection) -> "DecodeSpec":
        # greedy ignores the sampling filters: normalised so that greedy configs share one program
        filters = (1.0, 0, 1.0) if config.greedy else (config.temperature, config.top_k, config.top_p)
        return cls(config.max_new_tokens, config.greedy, *filters, tuple(config.eos_token_ids), config.pad_token_id,
                   config.stop_poll_steps)


class Prefilled(NamedTuple):
    """Decode start state for R = B * G rows."""

    cache: KVCache  # [layers, R, kv_heads, bucket + max_new_tokens, head_dim]
    logits: jax.Array  # [R, vocab] float32: the next-token logits after the prompt
    next_position: jax.Array  # [R] int32: M-RoPE position of the first generated token
    # [image tokens, hidden] the vision tower's output for the prompts' images (None without any),
    # which the GRPO update reuses instead of running the tower again
    image_features: jax.Array | None = None


class Completion(NamedTuple):
    """Generated tokens of R = B * G rows (row b * G + g is sample g of prompt b)."""

    tokens: jax.Array  # [R, max_new_tokens] int32, pad_token_id after each row's end
    logprobs: jax.Array  # [R, max_new_tokens] float32 raw-policy log-probs, 0 after the end
    lengths: jax.Array  # [R] int32 tokens generated, the EOS / stop-string token included
    finished: jax.Array  # [R] bool: ended by an EOS id or a stop string (False: ran out of budget)
    # [] bool: the loop ended early on a stop request (`jaxbiqa.interrupts`): the rows are unfinished
    interrupted: jax.Array


def repeat_rows(prefilled: Prefilled, times: int) -> Prefilled:
    """Each row repeated `times` times in place (rows b * times + g): the group-sampling expansion."""
    if times == 1:
        return prefilled
    logits = constrain(jnp.repeat(prefilled.logits, times, axis=0), ("batch", "vocab"))
    return Prefilled(repeat_cache(prefilled.cache, times), logits,
                     jnp.repeat(prefilled.next_position, times, axis=0), prefilled.image_features)


def prefill(model, prompts: PromptBatch, new_tokens: int, num_samples: int = 1,
            cache_dtype: str = "auto") -> Prefilled:
    """Run the prompts into a new cache with room for `new_tokens` more; repeat for `num_samples`.

    `cache_dtype` "auto" is the model's compute dtype."""
    ids = constrain(jnp.asarray(prompts.input_ids, jnp.int32), ("batch", "length"))
    mask = constrain(jnp.asarray(prompts.attention_mask, jnp.int32), ("batch", "length"))
    b, t = ids.shape
    cache = init_cache(model.config, b, t + new_tokens, None if cache_dtype == "auto" else cache_dtype)
    features = None
    if prompts.pixel_values is not None:
        features = model.get_image_features(jnp.asarray(prompts.pixel_values), prompts.vision_plan)
    out = model(ids, jnp.asarray(prompts.positions, jnp.int32), mask, cache=cache, image_features=features,
                compute_logits=False)
    logits = constrain(model.compute_logits(out.hidden_states[:, -1]), ("batch", "vocab"))
    next_position = jnp.asarray(prompts.rope_deltas, jnp.int32) + jnp.sum(mask, axis=-1, dtype=jnp.int32)
    return repeat_rows(Prefilled(out.cache, logits, next_position, features), num_samples)


class _Loop(NamedTuple):
    step: jax.Array
    cache: KVCache
    logits: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array
    stop_states: tuple[jax.Array, ...]
    interrupted: jax.Array


def _stop_requested(step: jax.Array, every: int, already: jax.Array) -> jax.Array:
    """Every `every` steps, the host's stop request (one small callback; the rows' data stay on device)."""
    if not every:
        return already
    ask = lambda: io_callback(interrupts.poll, jax.ShapeDtypeStruct((), jnp.bool_), ordered=False)  # noqa: E731
    return jax.lax.cond(step % every == 0, ask, lambda: already)


def decode(model, prefilled: Prefilled, key: jax.Array, stops: Sequence[StringMatcher],
           config: DecodeSpec) -> tuple[Completion, KVCache]:
    """Sample up to `max_new_tokens` per row from `prefilled`; returns the completion and the final
    cache. Every `stop_poll_steps` steps the loop reads the host's stop request and ends on it."""
    rows, budget = prefilled.logits.shape[0], config.max_new_tokens
    eos = jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)
    ones = jnp.ones((rows, 1), jnp.int32)
    # the loop body rebuilds the module with its own Variables: NNX transforms inside it (scanned
    # or rematerialised layers) reject Variables created outside the while_loop's trace
    graphdef, state = nnx.split(model)

    def body(s: _Loop) -> _Loop:
        model = nnx.merge(graphdef, state, copy=True)
        token = sample_tokens(s.logits, jax.random.fold_in(key, s.step), greedy=config.greedy,
                              temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
        live = ~s.done
        token = jnp.where(live, token, config.pad_token_id)
        logprob = jnp.where(live, token_logprob(s.logits, token), 0.0)
        ended = jnp.isin(token, eos)
        stop_states = tuple(advance(m, st, token) for m, st in zip(stops, s.stop_states))
        for m, st in zip(stops, stop_states):
            ended = ended | (st >= m.length)
        positions = jnp.broadcast_to((prefilled.next_position + s.step)[None, :, None], (3, rows, 1))
        out = model(token[:, None], positions, ones, cache=s.cache, compute_logits=False)
        return _Loop(step=s.step + 1, cache=out.cache,
                     logits=constrain(model.compute_logits(out.hidden_states[:, 0]), ("batch", "vocab")),
                     tokens=jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step)),
                     logprobs=jax.lax.dynamic_update_slice(s.logprobs, logprob[:, None], (0, s.step)),
                     lengths=s.lengths + live.astype(jnp.int32), done=s.done | (live & ended),
                     stop_states=stop_states,
                     interrupted=_stop_requested(s.step + 1, config.stop_poll_steps, s.interrupted))

    def running(s: _Loop) -> jax.Array:
        return (s.step < budget) & ~jnp.all(s.done) & ~s.interrupted

    init = _Loop(step=jnp.zeros((), jnp.int32), cache=prefilled.cache, logits=prefilled.logits,
                 tokens=constrain(jnp.full((rows, budget), config.pad_token_id, jnp.int32), ("batch", "length")),
                 logprobs=constrain(jnp.zeros((rows, budget), jnp.float32), ("batch", "length")),
                 lengths=jnp.zeros(rows, jnp.int32), done=jnp.zeros(rows, bool),
                 stop_states=tuple(jnp.zeros(rows, jnp.int32) for _ in stops),
                 interrupted=_stop_requested(jnp.zeros((), jnp.int32), config.stop_poll_steps,
                                             jnp.zeros((), bool)))
    final = jax.lax.while_loop(running, body, init)
    return Completion(final.tokens, final.logprobs, final.lengths, final.done, final.interrupted), final.cache


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _prefill_program(graphdef, state, prompts: PromptBatch, new_tokens: int, num_samples: int,
                     cache_dtype: str) -> Prefilled:
    return prefill(nnx.merge(graphdef, state), prompts, new_tokens, num_samples, cache_dtype)


@functools.partial(jax.jit, static_argnums=(0, 7), donate_argnames="cache")
def _decode_program(graphdef, state, cache: KVCache, logits, next_position, key, stops, spec: DecodeSpec):
    return decode(nnx.merge(graphdef, state), Prefilled(cache, logits, next_position), key, stops, spec)


def matchers(strings: Sequence[str], vocab: Sequence[bytes] | None) -> tuple[StringMatcher, ...]:
    """Device tables for `strings` over `vocab` (the bytes of each token id)."""
    if strings and vocab is None:
        raise ValueError(f"stop strings {tuple(strings)} need the token bytes of the vocabulary "
                         "(Sampler.from_tokenizer, or vocab=textmatch.token_bytes(tokenizer, vocab_size))")
    return tuple(StringMatcher(*map(jnp.asarray, build_matcher(vocab, s))) for s in strings)


class Sampler:
    """One pass's compiled sampling for a fixed `SamplingSection`.

    `vocab` (one byte string per token id, `textmatch.token_bytes`) is needed for stop strings.
    Models are passed per call (`nnx.Module`, possibly sharded under `jax.set_mesh`); the
    programs are compiled once per model structure, batch shape and prompt bucket.
    """

    def __init__(self, config: SamplingSection, vocab: Sequence[bytes] | None = None):
        self.config = config
        self.spec = DecodeSpec.of(config)
        self.stops = matchers(config.stop_strings, vocab)

    @classmethod
    def from_tokenizer(cls, config: SamplingSection, tokenizer, vocab_size: int) -> "Sampler":
        return cls(config, token_bytes(tokenizer, vocab_size) if config.stop_strings else None)

    def prepare(self, model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> PromptBatch:
        """Left-pad into this config's prompt bucket and compute positions (host side)."""
        return prepare_prompts(model.config, input_ids, attention_mask, pixel_values, image_grid_thw,
                               buckets=self.config.prompt_buckets, pad_token_id=self.config.pad_token_id)

    def prefill(self, model, prompts: PromptBatch) -> Prefilled:
        graphdef, state = nnx.split(model)
        c = self.config
        return _prefill_program(graphdef, state, prompts, c.max_new_tokens, c.num_samples, c.cache_dtype)

    def decode(self, model, prefilled: Prefilled, key: jax.Array) -> Completion:
        """Decode from `prefilled` (its cache is donated: do not use it afterwards)."""
        graphdef, state = nnx.split(model)
        completion, _ = _decode_program(graphdef, state, prefilled.cache, prefilled.logits, prefilled.next_position,
                                        key, self.stops, self.spec)
        return completion

    def __call__(self, model, prompts: PromptBatch, key: jax.Array) -> Completion:
        return self.decode(model, self.prefill(model, prompts), key)


def completion_texts(completion: Completion, decode_ids: Callable[[list[int]], str]) -> list[str]:
    """Each row's generated text, decoded on the host after the loop, e.g. with
    `lambda ids: tokenizer.decode(ids, skip_special_tokens=True)`."""
    tokens, lengths = np.asarray(completion.tokens), np.asarray(completion.lengths)
    return [decode_ids(row[:n].tolist()) for row, n in zip(tokens, lengths)]
