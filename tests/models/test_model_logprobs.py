"""Chunked per-token log-probs: the numbers of a full log-softmax without its [B, T, V] float32 tensor."""

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import text_positions, token_logprobs

B, T = 2, 9


@pytest.fixture(scope="module")
def setup():
    model = random_model(tiny_config())
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 480, (B, T + 1)))
    mask = jnp.ones((B, T + 1), jnp.int32).at[1, :3].set(0)
    hidden = nnx.jit(lambda m: m(ids, text_positions(mask), mask, compute_logits=False).hidden_states)(model)
    return model, hidden[:, :-1], ids[:, 1:]


def _full(model, hidden, targets):
    logp = jax.nn.log_softmax(model.compute_logits(hidden), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], entropy


@pytest.mark.parametrize("chunk_size", [4, 9, 64])
def test_chunked_logprobs_and_entropy_equal_full_log_softmax(setup, chunk_size):
    model, hidden, targets = setup
    fn = nnx.jit(lambda m, h, y: token_logprobs(m, h, y, chunk_size=chunk_size, return_entropy=True))
    logp, entropy = fn(model, hidden, targets)
    ref_logp, ref_entropy = nnx.jit(_full)(model, hidden, targets)
    assert logp.shape == entropy.shape == (B, T) and logp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logp), np.asarray(ref_logp), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(entropy), np.asarray(ref_entropy), atol=1e-5, rtol=0)


def _grads(fn, model, hidden, targets):
    def loss(model, hidden):
        return jnp.sum(fn(model, hidden, targets) * jnp.linspace(0.5, 1.5, T))

    return nnx.jit(nnx.grad(loss, argnums=(0, 1)))(model, hidden)


def test_chunked_logprobs_gradients_equal_full(setup):
    model, hidden, targets = setup
    (g_model, g_hidden) = _grads(lambda m, h, y: token_logprobs(m, h, y, chunk_size=4), model, hidden, targets)
    (r_model, r_hidden) = _grads(lambda m, h, y: _full(m, h, y)[0], model, hidden, targets)
    np.testing.assert_allclose(np.asarray(g_hidden), np.asarray(r_hidden), atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_model["lm_head"]["kernel"][...]),
                               np.asarray(r_model["lm_head"]["kernel"][...]), atol=1e-5)


def _vocab_blocks(closed: jcore.ClosedJaxpr, vocab: int) -> list[tuple[int, ...]]:
    """Shapes of every float32 intermediate [..., vocab] with at least B*T rows, in all nested jaxprs."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                shape = getattr(var.aval, "shape", ())
                if (len(shape) >= 3 and shape[-1] == vocab and var.aval.dtype == jnp.float32
                        and np.prod(shape[:-1]) >= B * T):
                    found.append(shape)
            for sub in jcore.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(closed.jaxpr)
    return found


def test_no_full_vocab_tensor_in_forward_or_backward(setup):
    model, hidden, targets = setup
    vocab = model.config.text.vocab_size
    graphdef, state = nnx.split(model)

    def loss(state, hidden, chunk):
        return jnp.sum(token_logprobs(nnx.merge(graphdef, state), hidden, targets, chunk_size=chunk))

    chunked = jax.make_jaxpr(jax.value_and_grad(lambda s, h: loss(s, h, 4), argnums=(0, 1)))(state, hidden)
    assert _vocab_blocks(chunked, vocab) == []
    # the detector does see the full block when the chunk spans the whole sequence
    whole = jax.make_jaxpr(jax.value_and_grad(lambda s, h: loss(s, h, T), argnums=(0, 1)))(state, hidden)
    assert (B, T, vocab) in _vocab_blocks(whole, vocab)
