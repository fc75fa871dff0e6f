"""Prefill + step-by-step cached decode reproduces the logits of one full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE_TOKEN, PAD, VISION_END, VISION_START, random_model, tiny_config
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import get_rope_index, init_cache, repeat_cache, text_positions, vision_plan

GRID = np.array([(1, 4, 6)])  # one non-square image, 6 image tokens


def _batch(rng):
    """Row 0: text + image + text; row 1: shorter text-only prompt (left padded)."""
    image = [VISION_START] + [IMAGE_TOKEN] * 6 + [VISION_END]
    rows = [[1, 2, 3] + image + [4, 5], rng.integers(0, 480, 5).tolist()]
    width = max(map(len, rows))
    ids = np.full((2, width), PAD)
    mask = np.zeros((2, width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask


@nnx.jit
def _step(model, ids, positions, mask, pixels, plan, cache):
    out = model(ids, positions, mask, pixels, plan, cache)
    return out.logits, out.cache


@pytest.mark.parametrize("scan_layers", [False, True])
def test_prefill_then_decode_equals_full_forward(scan_layers):
    config = tiny_config(scan_layers=scan_layers)
    model = random_model(config)
    rng = np.random.default_rng(0)
    prompt, prompt_mask = _batch(rng)
    new = rng.integers(0, 480, (2, 5))
    pixels = jnp.asarray(rng.standard_normal((int(GRID.prod()), config.vision.patch_dim)), jnp.float32)
    plan = vision_plan(GRID, config.vision)

    full_ids = np.concatenate([prompt, new], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones_like(new)], axis=1)
    full_pos, _ = get_rope_index(full_ids, GRID, full_mask, config)
    full = np.asarray(_step(model, jnp.asarray(full_ids), jnp.asarray(full_pos), jnp.asarray(full_mask), pixels,
                            plan, None)[0])

    t = prompt.shape[1]
    cache = init_cache(config, batch=2, max_len=t + new.shape[1] + 3)  # spare slots stay masked
    positions, deltas = get_rope_index(prompt, GRID, prompt_mask, config)
    logits, cache = _step(model, jnp.asarray(prompt), jnp.asarray(positions), jnp.asarray(prompt_mask), pixels,
                          plan, cache)
    valid = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], full[:, :t][valid], atol=1e-5, rtol=0)
    assert int(cache.index) == t

    mask_so_far = prompt_mask
    for j in range(new.shape[1]):
        mask_so_far = np.concatenate([mask_so_far, np.ones((2, 1), np.int32)], axis=1)
        pos = text_positions(mask_so_far, deltas)[:, :, -1:]
        logits, cache = _step(model, jnp.asarray(new[:, j:j + 1]), jnp.asarray(pos), jnp.ones((2, 1), jnp.int32),
                              None, None, cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t + j], atol=1e-5, rtol=0)
    assert int(cache.index) == t + new.shape[1]
    np.testing.assert_array_equal(np.asarray(cache.mask)[:, :t + new.shape[1]], full_mask.astype(bool))
    assert not np.asarray(cache.mask)[:, t + new.shape[1]:].any()


def test_cache_shapes_and_dtype():
    config = tiny_config()
    cache = init_cache(config, batch=3, max_len=16, dtype="bfloat16")
    t = config.text
    assert cache.k.shape == cache.v.shape == (t.num_hidden_layers, 3, t.num_key_value_heads, 16, t.head_dim)
    assert cache.k.dtype == jnp.bfloat16 and cache.mask.shape == (3, 16) and int(cache.index) == 0
    # a pytree of arrays only: it can be repeated for group sampling without Python state
    repeated = jax.tree.map(lambda x: x, cache)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(repeated))


def test_repeated_cache_decodes_like_a_repeated_prompt():
    """G samples sharing one prefill: repeating the cache equals prefilling the repeated batch."""
    config = tiny_config()
    model = random_model(config)
    prompt, mask = _batch(np.random.default_rng(1))
    prompt, mask = prompt[1:], mask[1:]  # the text-only row
    positions, deltas = get_rope_index(prompt, None, mask, config)
    t = prompt.shape[1]
    _, cache = _step(model, jnp.asarray(prompt), jnp.asarray(positions), jnp.asarray(mask), None, None,
                     init_cache(config, 1, t + 2))
    _, cache3 = _step(model, jnp.asarray(np.repeat(prompt, 3, 0)), jnp.asarray(np.repeat(positions, 3, 1)),
                      jnp.asarray(np.repeat(mask, 3, 0)), None, None, init_cache(config, 3, t + 2))
    shared = repeat_cache(cache, 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), shared, cache3)
    token = jnp.asarray([[7], [8], [9]])
    pos = jnp.asarray(text_positions(np.concatenate([np.repeat(mask, 3, 0), np.ones((3, 1), int)], 1),
                                     np.repeat(deltas, 3, 0))[:, :, -1:])
    a, _ = _step(model, token, pos, jnp.ones((3, 1), jnp.int32), None, None, shared)
    b, _ = _step(model, token, pos, jnp.ones((3, 1), jnp.int32), None, None, cache3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
