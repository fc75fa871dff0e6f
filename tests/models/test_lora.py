"""LoRA adapters: a fresh adapter changes nothing, merging folds them into the base, filters pick the right leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import LoraConfig, merge_lora, text_positions, trainable_filter
from jaxbiqa.models.qwen2_5_vl.lora import Linear


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 480, (2, 7)))
    mask = jnp.ones((2, 7), jnp.int32).at[0, :2].set(0)
    return ids, text_positions(mask), mask


@nnx.jit
def _logits(model, ids, positions, mask, key=None):
    return model(ids, positions, mask, dropout_key=key).logits


def _randomise_adapters(model, seed=3):
    rng = np.random.default_rng(seed)
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        variable.set_value(jnp.asarray(0.1 * rng.standard_normal(variable.get_value().shape), jnp.float32))


def test_linear_rank_zero_is_plain_and_adapter_math():
    plain = Linear(6, 5, axes=("embed", "mlp"), use_bias=True, rngs=nnx.Rngs(0))
    assert not hasattr(plain, "lora_a") and plain.kernel.shape == (6, 5)
    lora = Linear(6, 5, axes=("embed", "mlp"), use_bias=True, rank=2, alpha=4.0, rngs=nnx.Rngs(0))
    assert lora.lora_a.shape == (6, 2) and lora.lora_b.shape == (2, 5)
    assert isinstance(lora.lora_a, nnx.LoRAParam) and not np.asarray(lora.lora_b[...]).any()
    lora.lora_b.set_value(jnp.ones((2, 5)))
    x = jnp.arange(12.0).reshape(2, 6) / 10
    expected = x @ lora.kernel[...] + lora.bias[...] + 2.0 * (x @ lora.lora_a[...]) @ lora.lora_b[...]
    np.testing.assert_allclose(np.asarray(lora(x)), np.asarray(expected), rtol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_fresh_adapters_keep_logits_and_merge_folds_them(scan_layers):
    base = random_model(tiny_config(scan_layers=scan_layers))
    lora = random_model(tiny_config(scan_layers=scan_layers, lora=LoraConfig()))  # same seed: same base weights
    args = _inputs()
    base_logits = np.asarray(_logits(base, *args))
    np.testing.assert_allclose(np.asarray(_logits(lora, *args)), base_logits, atol=1e-6)

    _randomise_adapters(lora)
    lora_logits = np.asarray(_logits(lora, *args))
    assert np.abs(lora_logits - base_logits).max() > 1e-2  # the adapters do something
    merged = merge_lora(lora)
    assert merged.config.lora is None and not nnx.state(merged, nnx.LoRAParam)
    # W + A B in one kernel rounds differently from two products: float32 noise, far below the adapter effect
    np.testing.assert_allclose(np.asarray(_logits(merged, *args)), lora_logits, atol=5e-5)
    assert nnx.state(lora, nnx.LoRAParam)  # the source model keeps its adapters


def test_lora_dropout_needs_a_key_and_is_deterministic_per_key():
    model = random_model(tiny_config(lora=LoraConfig(dropout=0.5)))
    _randomise_adapters(model)
    args = _inputs()
    no_key = np.asarray(_logits(model, *args))
    np.testing.assert_array_equal(no_key, np.asarray(_logits(model, *args)))
    a = np.asarray(_logits(model, *args, jax.random.key(1)))
    assert np.abs(a - no_key).max() > 1e-3
    np.testing.assert_array_equal(a, np.asarray(_logits(model, *args, jax.random.key(1))))
    assert np.abs(np.asarray(_logits(model, *args, jax.random.key(2))) - a).max() > 1e-3


def test_target_modules_and_trainable_filters():
    config = tiny_config(lora=LoraConfig(rank=4, target_modules=("q_proj", "v_proj")))
    model = random_model(config)
    adapters = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))]
    assert {p[-2] for p in adapters} == {"q_proj", "v_proj"} and len(adapters) == 2 * 2 * 2  # layers x modules x {a,b}

    def paths(flt):
        return {p for p, _ in nnx.to_flat_state(nnx.state(model, flt))}

    every, vision = paths(nnx.Param), {p for p in paths(nnx.Param) if p[0] == "visual"}
    assert paths(trainable_filter(lora=True, freeze_vision=True)) == set(adapters)
    assert paths(trainable_filter(lora=True, freeze_vision=False)) == set(adapters) | vision
    assert paths(trainable_filter(lora=False, freeze_vision=False)) == every
    assert paths(trainable_filter(lora=False, freeze_vision=True)) == every - vision
    assert vision and all(p[0] != "visual" for p in adapters)


def test_lora_config_validation():
    assert (LoraConfig().rank, LoraConfig().alpha, LoraConfig().dropout) == (8, 16.0, 0.1)
    assert len(LoraConfig().target_modules) == 7
    with pytest.raises(ValueError, match="qkv"):
        LoraConfig(target_modules=("qkv",))
    with pytest.raises(ValueError, match="dropout"):
        LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(random_model(tiny_config()))
