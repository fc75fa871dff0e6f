import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxbiqa.config import RuntimeSection
from jaxbiqa.distributed import rules_from_config
from jaxbiqa.sharding import ShardingError, constrain, logical_to_spec, make_mesh, sharding_for


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


def test_an_axis_that_does_not_divide_is_an_error_unless_it_is_the_batch():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding_for((8, 4), ("embed", "kv_heads"), mesh).spec == P("fsdp", "tensor")
    with pytest.raises(ShardingError, match=r"dimension 1 \('kv_heads', size 3\) does not split 2 ways .*"
                                            r"runtime.rules.kv_heads="):
        sharding_for((6, 3), ("embed", "kv_heads"), mesh)
    # rows: 2 over the 4 batch devices (data x fsdp) run on the data axis, 3 run replicated
    assert sharding_for((2, 8), ("batch", "mlp"), mesh).spec == P("data", "tensor")
    assert sharding_for((3, 8), ("batch", "mlp"), mesh).spec == P(None, "tensor")


def test_seven_b_kv_heads_on_tensor_8_is_an_error_with_the_way_out():
    """Qwen2.5-VL-7B's 4 KV heads do not split over tensor=8: the KV cache would silently be
    replicated. The error names the array; replicating is the explicit rule it suggests."""
    mesh = make_mesh({"tensor": 8})
    with pytest.raises(ShardingError, match=r"activation of shape \(28, 2, 4, 64, 128\): dimension 2 \('kv_heads'"):
        sharding_for((28, 2, 4, 64, 128), ("layers", "batch", "kv_heads", "cache_length", "head_dim"), mesh)
    rules = rules_from_config(RuntimeSection(rules={"kv_heads": ""}))
    spec = sharding_for((28, 2, 4, 64, 128), ("layers", "batch", "kv_heads", "cache_length", "head_dim"), mesh,
                        rules).spec
    assert spec == P(None, None, None, None, None)


def test_constrain_is_identity_without_mesh_and_shards_under_one():
    x = jax.numpy.ones((8, 4))
    assert constrain(x, ("batch", "embed")) is x
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: constrain(a * 2, ("batch", "mlp")))(x)
    assert y.sharding.spec == P(("data", "fsdp"), "tensor")
