"""Logits of the jaxbiqa model against transformers' Qwen2_5_VLForConditionalGeneration (float32)."""

import numpy as np
import pytest
from conftest import (IMAGE_TOKEN, PAD, VISION_END, VISION_START, load_torch_weights, tiny_hf_config,
                      torch_reference)
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration, from_hf
from jaxbiqa.processing import pad_rows

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.parity

CONFIGS = {
    "base": {},
    # tied embeddings, one kv head, 3 layers, other M-RoPE split and theta
    "tied_mqa": dict(tie_word_embeddings=True, vision_config=dict(out_hidden_size=96), text_config=dict(
        num_hidden_layers=3, num_key_value_heads=1, hidden_size=96, num_attention_heads=4, intermediate_size=80,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 4, 4]})),
}


def _left_pad(rows):
    return tuple(a.astype(np.int64) for a in pad_rows(rows, PAD))


def _image_tokens(grid):
    return [VISION_START] + [IMAGE_TOKEN] * (int(np.prod(grid)) // 4) + [VISION_END]


def _models(overrides, seed=0):
    hf = tiny_hf_config(**overrides)
    reference = torch_reference(hf, seed)
    model = Qwen2_5_VLForConditionalGeneration(from_hf(hf), rngs=nnx.Rngs(seed))
    load_torch_weights(model, reference)
    return model, reference


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_text_only_left_padded_logits_match(name):
    model, reference = _models(CONFIGS[name])
    rng = np.random.default_rng(1)
    ids, mask = _left_pad([rng.integers(0, 480, 11).tolist(), rng.integers(0, 480, 6).tolist()])
    logits = np.asarray(model.forward(ids, mask))
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    valid = mask.astype(bool)
    assert np.abs(ref[valid]).max() > 1.0  # the comparison is not between near-zero logits
    np.testing.assert_allclose(logits[valid], ref[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_image_logits_match(name):
    """Two images of different sizes (one non-square, windows that do not divide the grid) in a
    left-padded batch beside an image-free shorter prompt, and a second row with one image."""
    model, reference = _models(CONFIGS[name])
    grids = np.array([(1, 6, 10), (1, 4, 4), (1, 10, 6)])  # 3x5 and 5x3 merge units over 2x2 windows
    rng = np.random.default_rng(2)
    rows = [[1, 2] + _image_tokens(grids[0]) + [3, 4] + _image_tokens(grids[1]) + [5, 6, 7],
            [8] + _image_tokens(grids[2]) + rng.integers(0, 480, 3).tolist()]
    ids, mask = _left_pad(rows)
    pixels = rng.standard_normal((int(grids.prod(-1).sum()), 3 * 2 * 14 * 14)).astype(np.float32)
    logits = np.asarray(model.forward(ids, mask, pixels, grids))
    with torch.no_grad():
        t_ids = torch.tensor(ids)
        ref = reference(input_ids=t_ids, attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels),
                        image_grid_thw=torch.tensor(grids), mm_token_type_ids=(t_ids == IMAGE_TOKEN).int()).logits
    valid = mask.astype(bool)
    np.testing.assert_allclose(logits[valid], ref.numpy()[valid], atol=1e-4, rtol=0)
