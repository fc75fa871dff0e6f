"""`generate`: transformers' `model.generate` arguments, on the compiled sampler.

Differences from transformers, by design: the result holds the NEW tokens only (transformers
prepends the prompt: compare with `torch_output[:, prompt_length:]`); the M-RoPE positions always
come from `get_rope_index` (transformers needs `mm_token_type_ids` for that); randomness comes
from `seed`, not torch's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxbiqa.config import SamplingSection
from jaxbiqa.rollout.sampler import Sampler


class Generation(NamedTuple):
    sequences: np.ndarray  # [B * num_return_sequences, L] new token ids, pad after each row's end
    logprobs: np.ndarray  # [B * num_return_sequences, L] raw-policy log-probs of those tokens, 0 after the end
    lengths: np.ndarray  # [B * num_return_sequences] tokens generated per row (EOS included)
    finished: np.ndarray  # [B * num_return_sequences] ended by EOS / a stop string


def generate(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
             max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = 50,
             top_p: float = 1.0, num_return_sequences: int = 1, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, stop_strings: str | Sequence[str] = (), tokenizer=None, seed: int = 0,
             prompt_buckets: Sequence[int] = (), cache_dtype: str = "auto",
             return_dict_in_generate: bool = False) -> np.ndarray | Generation:
    """Generate with a jaxbiqa Qwen2.5-VL, with the meaning of transformers' arguments.

    Greedy unless `do_sample` (then temperature, `top_k` (transformers' default 50; 0 or None: off)
    and top_p). `eos_token_id` defaults to the model config's (none: rows run to `max_new_tokens`);
    `pad_token_id` to the first EOS id (0 without one).
    `stop_strings` (with `tokenizer`, as in transformers) end a row once its text contains one.
    `num_return_sequences` samples per prompt share one prefill (rows `b * n + i`). `L` is the
    longest generation (at most `max_new_tokens`), like transformers' trimmed output. Returns the
    new token ids `[B * n, L]`, or a `Generation` with log-probs when `return_dict_in_generate`.
    """
    eos = model.config.text.eos_token_id if eos_token_id is None else eos_token_id
    eos = () if eos is None else (int(eos),) if np.isscalar(eos) else tuple(int(e) for e in eos)
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if stops and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (generate(..., stop_strings=..., tokenizer=tokenizer))")
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    config = SamplingSection(max_new_tokens=max_new_tokens, num_samples=num_return_sequences, greedy=not do_sample,
                            temperature=temperature, top_k=top_k or 0, top_p=top_p, stop_strings=stops,
                            eos_token_ids=eos, pad_token_id=pad_token_id,
                            prompt_buckets=tuple(prompt_buckets), cache_dtype=cache_dtype)
    sampler = Sampler.from_tokenizer(config, tokenizer, model.config.text.vocab_size)
    prompts = sampler.prepare(model, input_ids, attention_mask, pixel_values, image_grid_thw)
    completion = jax.device_get(sampler(model, prompts, jax.random.key(seed)))
    width = int(completion.lengths.max())
    if not return_dict_in_generate:
        return completion.tokens[:, :width]
    return Generation(completion.tokens[:, :width], completion.logprobs[:, :width], completion.lengths,
                      completion.finished)
