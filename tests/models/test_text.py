"""Decoder options that must not change the numbers (scanned layers, remat, dtype policy), and its attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import text_positions
from jaxbiqa.models.qwen2_5_vl.text import grouped_attention


def _inputs(seed=0, batch=2, length=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 480, (batch, length))
    mask = np.ones((batch, length), np.int32)
    mask[1, :4] = 0  # left padding
    return jnp.asarray(ids), text_positions(jnp.asarray(mask)), jnp.asarray(mask)


def _copy_weights(source, target):
    """Give `target` (scanned or not) the weights of the unrolled `source`."""
    flat = dict(nnx.to_flat_state(nnx.state(source)))
    n = len(source.model.layers)
    for path, variable in nnx.to_flat_state(nnx.state(target)):
        if target.config.scan_layers and path[:2] == ("model", "layers"):
            variable.set_value(jnp.stack([flat[path[:2] + (i,) + path[2:]].get_value() for i in range(n)]))
        else:
            variable.set_value(flat[path].get_value())


def _loss_and_grads(model, ids, positions, mask):
    def loss(model):
        logits = model(ids, positions, mask).logits
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) * mask)

    return nnx.jit(nnx.value_and_grad(loss))(model)


@pytest.fixture(scope="module")
def reference():
    model = random_model(tiny_config())
    return model, _loss_and_grads(model, *_inputs())


@pytest.mark.parametrize("options", [dict(scan_layers=True), dict(remat=True), dict(scan_layers=True, remat=True)],
                         ids=["scan", "remat", "scan+remat"])
def test_scan_and_remat_change_nothing(reference, options):
    """Loss and gradients equal those of the plain unrolled model with the same weights."""
    model_ref, (loss_ref, grads_ref) = reference
    model = random_model(tiny_config(**options), seed=7)
    _copy_weights(model_ref, model)
    loss, grads = _loss_and_grads(model, *_inputs())
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6)
    if options.get("scan_layers"):
        assert model.model.layers.self_attn.q_proj.kernel.shape[0] == 2  # one stacked module
        grads = _unstack(grads, len(model_ref.model.layers))
    flat_ref = dict(nnx.to_flat_state(grads_ref))
    flat = dict(nnx.to_flat_state(grads))
    assert flat.keys() == flat_ref.keys()
    for path in flat_ref:
        np.testing.assert_allclose(np.asarray(flat[path][...]), np.asarray(flat_ref[path][...]), atol=1e-6,
                                   err_msg=str(path))


def _unstack(grads, n):
    """Scanned-layout gradients as the unrolled layout's flat paths."""
    out = {}
    for path, value in nnx.to_flat_state(grads):
        if path[:2] == ("model", "layers"):
            for i in range(n):
                out[path[:2] + (i,) + path[2:]] = nnx.Param(value[...][i])
        else:
            out[path] = value
    return nnx.from_flat_state(out)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bfloat16_compute_follows_float32(param_dtype):
    ref = random_model(tiny_config())
    bf16 = random_model(tiny_config(dtype="bfloat16", param_dtype=param_dtype))
    args = _inputs(2)
    out32 = nnx.jit(lambda m, *a: m(*a))(ref, *args)
    out16 = nnx.jit(lambda m, *a: m(*a))(bf16, *args)
    assert out16.hidden_states.dtype == jnp.bfloat16 and out16.logits.dtype == jnp.float32
    assert bf16.model.layers[0].mlp.up_proj.kernel.get_value().dtype == jnp.dtype(param_dtype)
    valid = np.asarray(args[2]).astype(bool)
    diff = np.abs(np.asarray(out16.logits) - np.asarray(out32.logits))[valid]
    assert diff.max() < 0.1 * np.abs(np.asarray(out32.logits)).max()


@pytest.mark.parametrize("groups", [1, 4])
def test_grouped_attention_equals_dot_product_attention(groups):
    """The decoder's attention over heads-major keys/values is `jax.nn.dot_product_attention` over
    the usual layout, padded query rows (every key masked) included: finite, uniform weights."""
    rng = np.random.default_rng(groups)
    b, t, s, kv, d = 3, 5, 7, 2, 8
    q = jnp.asarray(rng.standard_normal((b, t, kv * groups, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, s, kv, d)), jnp.float32) for _ in range(2))
    mask = rng.random((b, 1, t, s)) < 0.6
    mask[1, 0, 2] = False  # a query that sees no key
    mask = jnp.asarray(mask)
    got = grouped_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
    want = jax.nn.dot_product_attention(q, k, v, mask=mask)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got[1, 2]), np.asarray(jnp.mean(v[1], axis=0)).repeat(groups, 0), atol=1e-6)
