"""Options of the rollout engine (no heavy imports): one pass's sampling, and the two-pass rollout.

Every field is static for the compiled sampler: changing one compiles a new program, so a run
keeps them fixed. `SamplingConfig` is one pass (also what `jaxbiqa.rollout.generate` builds from
transformers-style arguments); `RolloutConfig` is the method's rollout: pass 1 with the image
(G samples per prompt), then pass 2 from each pass-1 caption alone.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

QWEN_IM_END, QWEN_ENDOFTEXT = 151645, 151643


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 1024
    num_samples: int = 1  # G: completions per prompt, all decoded from one shared prefill
    greedy: bool = False  # argmax decoding (temperature / top_k / top_p are then ignored)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    # a row stops once its text contains one of these (matched on device, whatever the tokenization)
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = (QWEN_IM_END, QWEN_ENDOFTEXT)
    pad_token_id: int = QWEN_ENDOFTEXT  # fills the token buffer after a row's end
    # prompt lengths are padded up to the smallest bucket that fits; () pads to the batch's longest
    prompt_buckets: tuple[int, ...] = ()
    cache_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # "auto": the model's compute dtype

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.num_samples < 1:
            problems.append(f"num_samples={self.num_samples} must be >= 1")
        if not self.greedy and not self.temperature > 0:
            problems.append(f"temperature={self.temperature} must be > 0 (use greedy=True for argmax)")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 is off)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if any(not s for s in self.stop_strings):
            problems.append("stop_strings must not contain an empty string")
        if list(self.prompt_buckets) != sorted(set(self.prompt_buckets)) or any(b < 1 for b in self.prompt_buckets):
            problems.append(f"prompt_buckets={self.prompt_buckets} must be positive and strictly increasing")
        if problems:
            raise ValueError("SamplingConfig: " + "; ".join(problems))

    def replace(self, **changes) -> "SamplingConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """The method's rollout (method.md section 4): pass 1 on image + prompt, pass 2 on the caption."""

    pass1: SamplingConfig = SamplingConfig(num_samples=4, stop_strings=("</answer>",),
                                           prompt_buckets=(320, 384, 512, 768, 1024))
    pass2: SamplingConfig = SamplingConfig(num_samples=1, stop_strings=("</answer>",),
                                           prompt_buckets=(256, 512, 768, 1024, 1536))
    two_pass: bool = True
    # pass 2 sees the pass-1 text before the first <think> (caption only, the method) or <answer>
    # (caption + think, method.md 8.3); the rule of `jaxbiqa.rewards.split_caption`
    caption_until: Literal["think", "answer"] = "think"
    # longest caption (in tokens) pass 2 accepts; longer ones are flagged like a missing caption.
    # 0: pass1.max_new_tokens (+ the few tokens a split token can add), i.e. never in practice
    max_caption_tokens: int = 0
    # build the pass-2 prompts on device from the pass-1 tokens: both passes are one compiled
    # program; False decodes pass 1 on the host and re-tokenizes (the reference path)
    fused: bool = True

    def __post_init__(self):
        if self.max_caption_tokens < 0:
            raise ValueError(f"RolloutConfig.max_caption_tokens={self.max_caption_tokens} must be >= 0")
