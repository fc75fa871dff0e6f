import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxbiqa.sharding import constrain, logical_to_spec, make_mesh, sharding_for


def test_mesh_fills_the_rest_and_rejects_bad_shapes():
    mesh = make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="at most one"):
        make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh({"data": 2, "fsdp": 2}, devices=jax.devices()[:8][:6])


def test_logical_names_follow_the_rules_table():
    assert logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_spec(("embed", "mlp"), mesh_axes=("data", "tensor")) == P(None, "tensor")
    custom = (("embed", "tensor"), ("mlp", "tensor"))
    assert logical_to_spec(("embed", "mlp"), custom) == P("tensor", None)  # a mesh axis is used once
    with pytest.raises(KeyError, match="no rule"):
        logical_to_spec(("nonsense",))


def test_sharding_drops_axes_that_do_not_divide():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding_for((6, 3), ("embed", "kv_heads"), mesh).spec == P("fsdp", None)
    assert sharding_for((8, 4), ("embed", "kv_heads"), mesh).spec == P("fsdp", "tensor")


def test_constrain_is_identity_without_mesh_and_shards_under_one():
    x = jax.numpy.ones((8, 4))
    assert constrain(x, ("batch", "embed")) is x
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: constrain(a * 2, ("batch", "mlp")))(x)
    assert y.sharding.spec == P(("data", "fsdp"), "tensor")
