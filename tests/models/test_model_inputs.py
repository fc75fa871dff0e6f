"""The transformers-shaped entry point: host-side checks on what is passed in."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE_TOKEN, VISION_END, VISION_START, random_model, tiny_config

from jaxbiqa.models.qwen2_5_vl import prepare_inputs
from jaxbiqa.models.qwen2_5_vl.model import merge_image_features


def test_prepare_inputs_rejects_mismatched_images():
    config = tiny_config()
    ids = np.array([[1, VISION_START] + [IMAGE_TOKEN] * 6 + [VISION_END]])
    pixels = np.zeros((24, config.vision.patch_dim), np.float32)
    with pytest.raises(ValueError, match="go together"):
        prepare_inputs(config, ids, pixel_values=pixels)
    with pytest.raises(ValueError, match="needs 8 <\\|image_pad\\|> tokens"):
        prepare_inputs(config, ids, None, np.zeros((32, config.vision.patch_dim)), np.array([(1, 4, 8)]))
    _, positions, mask, _, plan = prepare_inputs(config, ids, None, pixels, np.array([(1, 4, 6)]))
    assert positions.shape == (3, 1, ids.shape[1]) and plan.num_tokens == 6 and mask.dtype == jnp.int32


def test_image_features_must_match_the_text_width():
    with pytest.raises(ValueError, match="out_hidden_size must equal the text hidden_size"):
        merge_image_features(jnp.zeros((1, 3, 8)), jnp.array([[IMAGE_TOKEN] * 3]), jnp.zeros((3, 6)), IMAGE_TOKEN)


def test_merge_fills_image_tokens_in_row_major_order():
    ids = jnp.array([[IMAGE_TOKEN, 5, IMAGE_TOKEN], [7, IMAGE_TOKEN, 8]])
    features = jnp.arange(3.0)[:, None] * jnp.ones((3, 2))
    out = merge_image_features(-jnp.ones((2, 3, 2)), ids, features, IMAGE_TOKEN)
    np.testing.assert_array_equal(np.asarray(out[..., 0]), [[0, -1, 1], [-1, 2, -1]])


def test_forward_without_images_uses_text_positions():
    model = random_model(tiny_config())
    ids = np.array([[3, 4, 5, 6], [0, 0, 9, 10]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    logits = np.asarray(model.forward(ids, mask))
    # row 1 after its padding must equal the same two tokens alone
    alone = np.asarray(model.forward(ids[1:, 2:], mask[1:, 2:]))
    np.testing.assert_allclose(logits[1, 2:], alone[0], atol=1e-5)
    assert logits.shape == (2, 4, model.config.text.vocab_size) and logits.dtype == np.float32
