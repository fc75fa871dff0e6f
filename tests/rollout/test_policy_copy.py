"""The rollout's copy of the policy (`rollout.policy_layout`) on a 2x2x2 CPU mesh: each layout puts
the parameters where it says, decodes the tokens the training parameters decode (same dtype),
and refreshed from new master weights every step it compiles nothing again."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_engine import config, inputs, model, rollout  # noqa: F401  (fixtures and the toy rollout)

from jaxbiqa.distributed import Placement
from jaxbiqa.rollout.policy_copy import PolicyCopy, layout_rules
from jaxbiqa.sharding import DEFAULT_RULES, make_mesh, state_shardings


@pytest.fixture(scope="module")
def placement():
    return Placement(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), DEFAULT_RULES)


def _training(policy, placement):
    """The policy as the update holds it: sharded by the run's rules (fsdp on `embed`)."""
    graphdef, state = nnx.split(policy)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, placement.mesh)))


def _placed_as(policy, spec: P, mesh) -> bool:
    kernel = policy.model.layers[0].self_attn.q_proj.kernel[...]
    return kernel.sharding.is_equivalent_to(NamedSharding(mesh, spec), kernel.ndim)


@pytest.mark.parametrize("layout, q_proj", [("training", P("fsdp", "tensor")), ("tensor", P(None, "tensor")),
                                            ("replicated", P())])
def test_layouts_decode_the_training_parameters_tokens(model, config, placement, layout, q_proj):  # noqa: F811
    engine = rollout(config)
    key = jax.random.key(3)
    training = _training(model, placement)
    copy = PolicyCopy(layout, "float32", placement.mesh, placement.rules)
    with placement.scope():
        expected = engine(training, engine.prepare(training, *inputs()), key)
        decoder = copy(training)
        got = engine(decoder, engine.prepare(decoder, *inputs()), key)
    assert _placed_as(decoder, q_proj, placement.mesh)
    assert (decoder is training) == (layout == "training")  # nothing to cast or move: no second copy
    np.testing.assert_array_equal(got.pass1.tokens, expected.pass1.tokens)
    np.testing.assert_array_equal(got.pass2.tokens, expected.pass2.tokens)


def test_bf16_copy_of_float32_masters_is_refreshed_without_recompiling(model, config, placement):  # noqa: F811
    engine = rollout(config)
    training = _training(model, placement)
    copy = PolicyCopy("replicated", "bfloat16", placement.mesh, placement.rules)
    compiles = []
    for step in range(3):
        graphdef, state = nnx.split(training)  # a new update's master weights each step
        training = nnx.merge(graphdef, jax.tree.map(lambda x: x * (1 + 1e-3 * step), state))
        with placement.scope():
            decoder = copy(training)
            engine(decoder, engine.prepare(decoder, *inputs()), jax.random.key(step))
        compiles.append((copy.compile_count(), type(engine).compile_count()))
        kernel = decoder.model.layers[0].self_attn.q_proj.kernel[...]
        assert kernel.dtype == jnp.bfloat16 and kernel.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(kernel, np.float32), np.asarray(
            training.model.layers[0].self_attn.q_proj.kernel[...].astype(jnp.bfloat16), np.float32))
    assert compiles[0][0] == 1 and compiles[1] == compiles[2] == compiles[0]


def test_layout_rules():
    assert dict(layout_rules("tensor", DEFAULT_RULES))["embed"] is None
    assert dict(layout_rules("tensor", DEFAULT_RULES))["mlp"] == "tensor"
    assert all(axes is None for _, axes in layout_rules("replicated", DEFAULT_RULES))
    with pytest.raises(ValueError, match="policy_layout 'fsdp'"):
        layout_rules("fsdp", DEFAULT_RULES)
