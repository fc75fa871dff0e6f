"""A tiny random text model and GRPO batches for the update tests (no transformers, no torch).

Tests here import it as `from tiny_models import ...` (pytest puts this directory on `sys.path`);
others insert `tests/rl` into `sys.path` first.
"""

from __future__ import annotations

import zlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import (
    LoraConfig, ModelConfig, Qwen2_5_VLForConditionalGeneration, TextConfig, VisionConfig, text_positions)
from jaxbiqa.rl.losses import completion_mask

VOCAB, EOS, PAD = 96, 1, 0


def tiny_config(lora: LoraConfig | None = None, **text) -> ModelConfig:
    """Decoder hidden 32, 2 layers, 4 heads (2 kv), vocab 96; a one-block vision tower that text batches never run."""
    text_config = TextConfig(**{**dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, mrope_section=(1, 1, 2),
                                       rope_theta=10000.0, bos_token_id=2, eos_token_id=EOS), **text})
    vision = VisionConfig(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                          fullatt_block_indexes=(0,))
    return ModelConfig(text=text_config, vision=vision, image_token_id=VOCAB - 4, video_token_id=VOCAB - 3,
                       vision_start_token_id=VOCAB - 2, vision_end_token_id=VOCAB - 1, lora=lora)


def random_model(config: ModelConfig, seed: int = 0, scale: float = 0.2) -> Qwen2_5_VLForConditionalGeneration:
    """Weights from N(0, scale^2) per parameter path (norm scales 1 + noise, LoRA B = 0): the same base for any LoRA."""
    model = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(seed)))
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        value = variable.get_value()
        rng = np.random.default_rng([seed, zlib.crc32(".".join(map(str, path)).encode())])
        noise = scale * rng.standard_normal(value.shape).astype(np.float32)
        noise = 1.0 + noise if path[-1] == "scale" else 0.0 * noise if path[-1] == "lora_b" else noise
        variable.set_value(jnp.asarray(noise, value.dtype))
    return model


def grpo_batch(rows: int = 8, prompt: int = 5, completion: int = 7, seed: int = 0, group: int = 4) -> dict:
    """A text GRPO batch: left-padded prompts, completions with an EOS at random places, random advantages."""
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((rows, prompt), np.int32)
    for r in range(rows):
        prompt_mask[r, : rng.integers(0, prompt - 1)] = 0
    prompt_ids = np.where(prompt_mask > 0, rng.integers(3, VOCAB - 4, (rows, prompt)), PAD)
    completion_ids = rng.integers(3, VOCAB - 4, (rows, completion))
    for r in range(rows):
        stop = rng.integers(1, completion + 2)  # completion + 1: no EOS at all
        if stop <= completion:
            completion_ids[r, stop - 1] = EOS
            completion_ids[r, stop:] = PAD
    mask = np.asarray(completion_mask(completion_ids, EOS))
    ids = np.concatenate([prompt_ids, completion_ids], axis=1).astype(np.int32)
    attention = np.concatenate([prompt_mask, mask], axis=1).astype(np.int32)
    advantages = rng.standard_normal(rows).astype(np.float32)
    return dict(input_ids=ids, attention_mask=attention, positions=np.asarray(text_positions(attention)),
                completion_mask=mask, advantages=advantages)
