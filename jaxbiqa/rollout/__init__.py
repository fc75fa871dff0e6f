"""Compiled rollout: prefill + KV-cached `lax.while_loop` decode, G samples per shared prefill,
raw-policy log-probs, and the method's caption-only second pass (optionally in the same program).

Only the options are imported eagerly (the config system reads them without loading JAX); the
rest is imported on first use, e.g. `jaxbiqa.rollout.generate`.
"""

import importlib

from jaxbiqa.rollout.options import RolloutConfig, SamplingConfig

# public name -> submodule defining it
_EXPORTS = {
    "PromptBatch": "batch", "pick_bucket": "batch", "prepare_prompts": "batch",
    "Rollout": "engine", "RolloutResult": "engine",
    "Generation": "generation", "generate": "generation",
    "sample_tokens": "logits", "token_logprob": "logits",
    "SpliceTables": "pass2", "caption_prompts": "pass2", "splice_prompts": "pass2", "splice_tables": "pass2",
    "Completion": "sampler", "DecodeSpec": "sampler", "Prefilled": "sampler", "Sampler": "sampler", "completion_texts": "sampler",
    "decode": "sampler", "prefill": "sampler", "repeat_rows": "sampler",
    "StringMatcher": "textmatch", "build_matcher": "textmatch", "token_bytes": "textmatch",
}

__all__ = ["RolloutConfig", "SamplingConfig", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxbiqa.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxbiqa.rollout.{_EXPORTS[name]}"), name)
