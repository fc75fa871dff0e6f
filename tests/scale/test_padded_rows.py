"""Rows that do not divide the mesh's batch axes: `jaxbiqa.sharding.constrain` must leave those
axes out. Putting 2 rows on the 4 devices of data x fsdp of a 2x2x2 mesh (a padded sharding) made
XLA's SPMD partitioner compute a wrong gradient for an embedding table sharded over (tensor, fsdp),
as the model's token embeddings are; the trainer's warm start on 2 records hit it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxbiqa.sharding import constrain, make_mesh


def _loss(table, ids, weights):
    rows = constrain(jnp.take(table, ids, axis=0), ("batch", None, None))
    return jnp.sum(jnp.tanh(rows @ weights))


def test_embedding_gradient_with_fewer_rows_than_batch_devices():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((64, 32)).astype(np.float32)
    ids = rng.integers(0, 64, (2, 16)).astype(np.int32)
    weights = rng.standard_normal(32).astype(np.float32)
    expected = jax.grad(_loss)(table, ids, weights)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        sharded = jax.device_put(table, NamedSharding(mesh, PartitionSpec("tensor", "fsdp")))
        got = jax.jit(jax.grad(_loss))(sharded, jax.device_put(ids, NamedSharding(mesh, PartitionSpec("data"))),
                                       weights)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
