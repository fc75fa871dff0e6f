"""Tiny random Qwen2.5-VL models, a matching toy vocabulary and prompt batches (no torch needed).

The toy vocabulary (`TOY_VOCAB`, 104 ids): ids 0-94 are the printable ASCII characters, 95 is a
newline, 96 is the whole tag `<think>`, 97-103 are special (no text). Its tokenizer
(`toy_encode`) takes `<think>` as one token and every other character as its own, so re-encoding
a decoded text gives back the same ids except where `<think>` was spelled out character by
character.
"""

from __future__ import annotations

import functools

import numpy as np

VOCAB = 104
THINK = 96
VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN, BOS, EOS, PAD = range(97, 104)
GRID = np.array([[1, 4, 6]])  # one 4x6-patch image: 6 <|image_pad|> tokens

TOY_VOCAB = [bytes([c]) for c in range(32, 127)] + [b"\n", b"<think>"] + [b""] * 7


def toy_encode(text: str) -> list[int]:
    ids, i = [], 0
    while i < len(text):
        if text.startswith("<think>", i):
            ids.append(THINK)
            i += len("<think>")
        else:
            ids.append(95 if text[i] == "\n" else ord(text[i]) - 32)
            i += 1
    return ids


def toy_decode(ids) -> str:
    return b"".join(TOY_VOCAB[i] for i in ids).decode()


HF_CONFIG = {
    "text_config": dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                        max_position_embeddings=1024, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
    "vision_config": dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, in_channels=3, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=64,
                          fullatt_block_indexes=[1]),
    "image_token_id": IMAGE_TOKEN, "video_token_id": VIDEO_TOKEN, "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END, "tie_word_embeddings": False,
}


def tiny_config(**runtime):
    from jaxbiqa.models.qwen2_5_vl import from_hf

    return from_hf(HF_CONFIG, **runtime)


@functools.cache
def shared_model():
    """One random model per test session (its compiled programs are shared by the test modules)."""
    return random_model()


def random_model(config=None, seed: int = 0, scale: float = 0.15):
    """A jaxbiqa model with N(0, scale^2) weights (norm scales 1 + noise): peaked, varied logits."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxbiqa.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    config = config or tiny_config()
    model = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        value = variable.get_value()
        noise = scale * rng.standard_normal(value.shape).astype(np.float32)
        variable.set_value(jnp.asarray(1.0 + noise if path[-1] == "scale" else noise, value.dtype))
    return model


def image_prompts(rows: int = 2, seed: int = 0, image_rows: tuple[int, ...] | None = None):
    """(input_ids, attention_mask, pixel_values, image_grid_thw): left-padded prompts of different
    lengths; the rows in `image_rows` (default all) hold one GRID image each."""
    rng = np.random.default_rng(seed)
    image_rows = tuple(range(rows)) if image_rows is None else image_rows
    image = [VISION_START] + [IMAGE_TOKEN] * (int(GRID.prod()) // 4) + [VISION_END]
    seqs = []
    for r in range(rows):
        head, tail = rng.integers(0, THINK, 2 + r).tolist(), rng.integers(0, THINK, 3 + 2 * r).tolist()
        seqs.append(head + (image if r in image_rows else []) + tail)
    width = max(map(len, seqs))
    ids = np.full((rows, width), PAD, np.int64)
    mask = np.zeros((rows, width), np.int64)
    for r, seq in enumerate(seqs):
        ids[r, width - len(seq):], mask[r, width - len(seq):] = seq, 1
    if not image_rows:
        return ids, mask, None, None
    grids = np.repeat(GRID, len(image_rows), axis=0)
    pixels = rng.standard_normal((int(grids.prod(-1).sum()), 3 * 2 * 14 * 14)).astype(np.float32)
    return ids, mask, pixels, grids
