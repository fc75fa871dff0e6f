"""Compiled rollout: prefill + KV-cached `lax.while_loop` decode, G samples per shared prefill,
raw-policy log-probs, and the method's text-only second pass, spliced on device in the same program."""

from jaxbiqa.config import RolloutSection, SamplingSection
from jaxbiqa.rollout.batch import PromptBatch, pick_bucket, prepare_prompts
from jaxbiqa.rollout.engine import DeviceRollout, Rollout, RolloutResult
from jaxbiqa.rollout.generation import Generation, generate
from jaxbiqa.rollout.logits import sample_tokens, token_logprob
from jaxbiqa.rollout.pass2 import SpliceTables, splice_prompts, splice_tables
from jaxbiqa.rollout.sampler import (
    Completion, DecodeSpec, Prefilled, Sampler, completion_texts, decode, prefill, repeat_rows)
from jaxbiqa.rollout.textmatch import StringMatcher, build_matcher, token_bytes

__all__ = [
    "Completion", "DecodeSpec", "DeviceRollout", "Generation", "Prefilled", "PromptBatch", "Rollout", "RolloutResult",
    "RolloutSection", "Sampler", "SamplingSection", "SpliceTables", "StringMatcher", "build_matcher",
    "completion_texts", "decode", "generate", "pick_bucket", "prefill", "prepare_prompts",
    "repeat_rows", "sample_tokens", "splice_prompts", "splice_tables", "token_bytes", "token_logprob",
]
