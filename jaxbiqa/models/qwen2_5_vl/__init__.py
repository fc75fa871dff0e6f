"""Qwen2.5-VL in Flax NNX: vision tower, M-RoPE decoder, KV cache, LoRA, Hugging Face weights."""

import flax

# Variables carry logical sharding names as metadata only; arrays are placed by
# `jaxbiqa.sharding.state_shardings` + jit, so building a model needs no mesh.
flax.config.update("flax_always_shard_variable", False)

from jaxbiqa.models.qwen2_5_vl.config import LoraConfig, ModelConfig, TextConfig, VisionConfig, from_hf  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.lora import merge_lora, trainable_filter  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.model import (  # noqa: E402
    ModelOutput, Qwen2_5_VLForConditionalGeneration, prepare_inputs, token_logprobs)
from jaxbiqa.models.qwen2_5_vl.rope import get_rope_index, text_positions  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.text import CACHE_AXES, KVCache, init_cache, repeat_cache  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.vision import VisionPlan, vision_plan  # noqa: E402
from jaxbiqa.models.qwen2_5_vl.weights import from_pretrained, save_pretrained  # noqa: E402



__all__ = [
    "CACHE_AXES", "KVCache", "LoraConfig", "ModelConfig", "ModelOutput", "Qwen2_5_VLForConditionalGeneration",
    "TextConfig", "VisionConfig", "VisionPlan", "from_hf", "from_pretrained", "get_rope_index", "init_cache",
    "merge_lora", "prepare_inputs", "repeat_cache", "save_pretrained", "text_positions", "token_logprobs", "trainable_filter",
    "vision_plan",
]
