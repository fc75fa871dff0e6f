"""A stop request (`jaxbiqa.interrupts`, set by SIGTERM / SIGINT under `PreemptionGuard`) ends a
running decode loop at its next poll; without one the poll changes nothing."""

import dataclasses

import jax
import numpy as np
import pytest
from test_engine import config, inputs, model, rollout  # noqa: F401  (fixtures and the toy rollout)

from jaxbiqa import interrupts


@pytest.fixture
def stop_request():
    interrupts.request_stop()
    yield
    interrupts.clear()


def test_a_stop_request_ends_the_rollout_at_the_next_poll(model, config, stop_request):  # noqa: F811
    engine = rollout(config)
    out = engine(model, engine.prepare(model, *inputs()), jax.random.key(7))
    assert out.interrupted and bool(out.pass1.interrupted)
    assert (np.asarray(out.pass1.lengths) == 0).all()  # asked before the first token


def test_polling_changes_no_token(model, config):  # noqa: F811
    assert not interrupts.stop_requested()
    key = jax.random.key(7)
    never = dataclasses.replace(config, pass1=config.pass1.replace(stop_poll_steps=0),
                                pass2=config.pass2.replace(stop_poll_steps=0))
    outs = [engine(model, engine.prepare(model, *inputs()), key) for engine in (rollout(config), rollout(never))]
    assert not outs[0].interrupted and not outs[1].interrupted
    np.testing.assert_array_equal(outs[0].pass1.tokens, outs[1].pass1.tokens)
    np.testing.assert_array_equal(outs[0].pass2.tokens, outs[1].pass2.tokens)
