"""Tiny random Qwen2.5-VL configs and the PyTorch reference model for the model tests.

Import the helpers with `from conftest import tiny_hf_config, torch_reference` (pytest puts this
directory on `sys.path`). torch is imported lazily: tests that build the reference must call
`pytest.importorskip("torch")` and carry `@pytest.mark.parity`.
"""

from __future__ import annotations

from typing import Any

from torch_models import torch_reference  # noqa: F401  (re-exported for the model tests)

# Token ids for the tiny vocabulary; the special ids sit at the top like in the real one.
VOCAB = 512
VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN = 496, 497, 498, 499
BOS, EOS, PAD = 500, 501, 502

TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=1024, bos_token_id=BOS, eos_token_id=EOS,
    pad_token_id=PAD, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
)
VISION_DEFAULTS: dict[str, Any] = dict(
    depth=3, hidden_size=32, intermediate_size=48, num_heads=2, in_channels=3, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2, window_size=56, out_hidden_size=64, fullatt_block_indexes=[1],
)


def tiny_hf_config(**overrides: Any):
    """A small random-model `transformers.Qwen2_5_VLConfig`.

    `text_config=` / `vision_config=` dicts are merged into the defaults above (so pass only the
    fields to change); other keywords set top-level fields (`tie_word_embeddings=True`, token ids).
    Defaults: text hidden 64, 4 heads (head_dim 16), 2 kv heads, 2 layers, vocab 512; vision hidden
    32, 3 blocks with block 1 full attention, windows of 2x2 merge units (window_size 56, patch 14).
    """
    from transformers import Qwen2_5_VLConfig

    text = {**TEXT_DEFAULTS, **overrides.pop("text_config", {})}
    vision = {**VISION_DEFAULTS, **overrides.pop("vision_config", {})}
    top = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END, tie_word_embeddings=False)
    top.update(overrides)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)


def _torch_key(path: tuple) -> tuple[str, str]:
    """(torch state-dict key with "{i}" for a missing layer index, kind) of an NNX parameter path."""
    names = [str(p) for p in path]
    leaf = names.pop()
    kind = {"kernel": "linear", "bias": "copy", "scale": "copy", "embedding": "copy"}[leaf]
    if names[:2] == ["visual", "patch_embed"]:
        kind = "patch"
    body = ".".join(names).replace("mlp_0", "mlp.0").replace("mlp_2", "mlp.2")
    prefix = {"visual": "model.", "model": "model.language_model.", "lm_head": ""}[names[0]]
    if names[0] == "model":
        body = body[len("model."):]
        if names[1] == "layers" and not names[2].isdigit():
            body = body.replace("layers.", "layers.{i}.", 1)
    return prefix + body + (".bias" if leaf == "bias" else ".weight"), kind


def load_torch_weights(model, torch_model) -> None:
    """Copy a transformers Qwen2.5-VL's weights into a jaxbiqa model (test-local, independent of weights.py).

    Handles unrolled and stacked (scanned) decoder layers; LoRA adapters are left as they are.
    """
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    used = set()
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.LoRAParam))):
        key, kind = _torch_key(path)
        keys = [key.format(i=i) for i in range(variable.get_value().shape[0])] if "{i}" in key else [key]
        arrays = []
        for k in keys:
            w = sd[k]
            arrays.append(w.reshape(w.shape[0], -1).T if kind == "patch" else w.T if kind == "linear" else w)
            used.add(k)
        value = np.stack(arrays) if "{i}" in key else arrays[0]
        assert value.shape == variable.get_value().shape, (path, value.shape, variable.get_value().shape)
        variable.set_value(jnp.asarray(value, variable.get_value().dtype))
    unused = set(sd) - used - ({"lm_head.weight"} if model.lm_head is None else set())
    assert not unused, f"torch tensors not copied: {sorted(unused)}"


def tiny_config(**runtime: Any):
    """`ModelConfig` of `tiny_hf_config()` with runtime options (dtype, scan_layers, remat, lora)."""
    from jaxbiqa.models.qwen2_5_vl.config import from_hf

    return from_hf(tiny_hf_config().to_dict(), **runtime)


def random_model(config, seed: int = 0, scale: float = 0.1):
    """A jaxbiqa model with weights drawn like `torch_reference`'s (no torch needed).

    Built abstractly and filled from numpy (no per-shape initialiser compiles). Each parameter's
    draw depends only on `seed` and its path, so models with the same base layout share base
    weights; adapters get A ~ N(0, scale^2) and B = 0, so a LoRA model starts equal to its base.
    """
    import zlib

    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxbiqa.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    model = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(seed)))
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        shape, dtype = variable.get_value().shape, variable.get_value().dtype
        rng = np.random.default_rng([seed, zlib.crc32(".".join(map(str, path)).encode())])
        noise = scale * rng.standard_normal(shape, dtype=np.float32)
        value = 1.0 + noise if path[-1] == "scale" else 0.0 * noise if path[-1] == "lora_b" else noise
        variable.set_value(jnp.asarray(value, dtype))
    return model
