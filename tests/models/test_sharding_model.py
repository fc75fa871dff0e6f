"""The model on an 8-device CPU mesh (2x2x2 data/fsdp/tensor): same outputs, parameters sharded by the rules."""

import jax
import numpy as np
import pytest
from conftest import IMAGE_TOKEN, VISION_END, VISION_START, random_model, tiny_config
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbiqa.models.qwen2_5_vl import LoraConfig, Qwen2_5_VLForConditionalGeneration, prepare_inputs
from jaxbiqa.sharding import ShardingError, make_mesh, state_shardings

# What DEFAULT_RULES give each parameter on a 2x2x2 mesh (embed/vision_embed -> fsdp; vocab, heads,
# kv_heads, mlp, vision_mlp, vision_heads -> tensor; norms, qkv, patch, lora_rank replicated).
EXPECTED = {
    ("embed_tokens", "embedding"): P("tensor", "fsdp"),
    ("lm_head", "kernel"): P("fsdp", "tensor"),
    ("q_proj", "kernel"): P("fsdp", "tensor"), ("q_proj", "bias"): P("tensor"),
    ("k_proj", "kernel"): P("fsdp", "tensor"), ("k_proj", "bias"): P("tensor"),
    ("v_proj", "kernel"): P("fsdp", "tensor"), ("v_proj", "bias"): P("tensor"),
    ("o_proj", "kernel"): P("tensor", "fsdp"),
    ("gate_proj", "kernel"): P("fsdp", "tensor"), ("up_proj", "kernel"): P("fsdp", "tensor"),
    ("down_proj", "kernel"): P("tensor", "fsdp"),
    ("lora_a",): P("fsdp", None), ("lora_b",): P(None, "tensor"),  # q/k/v/gate/up: [embed, r], [r, out]
    ("o_proj", "lora_a"): P("tensor", None), ("o_proj", "lora_b"): P(None, "fsdp"),
    ("down_proj", "lora_a"): P("tensor", None), ("down_proj", "lora_b"): P(None, "fsdp"),
    ("scale",): P(),
    # vision tower
    ("patch_embed", "proj", "kernel"): P(None, "fsdp"),
    ("qkv", "kernel"): P("fsdp", None), ("qkv", "bias"): P(),
    ("attn", "proj", "kernel"): P("tensor", "fsdp"), ("attn", "proj", "bias"): P("fsdp"),
    ("mlp", "gate_proj", "bias"): P("tensor"), ("mlp", "up_proj", "bias"): P("tensor"),
    ("mlp", "down_proj", "bias"): P("fsdp"),
    ("mlp_0", "kernel"): P("fsdp", "tensor"), ("mlp_0", "bias"): P("tensor"),
    ("mlp_2", "kernel"): P("tensor", "fsdp"), ("mlp_2", "bias"): P("fsdp"),
}


def _expected(path) -> P:
    names = tuple(str(p) for p in path)
    for n in (3, 2, 1):  # the most specific suffix wins
        if names[-n:] in EXPECTED:
            return EXPECTED[names[-n:]]
    raise AssertionError(f"no expected sharding for {path}")


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.mark.parametrize("scan_layers", [False, True])
def test_parameter_shardings_follow_the_rules_table(mesh, scan_layers):
    abstract = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(
        tiny_config(scan_layers=scan_layers, lora=LoraConfig()), rngs=nnx.Rngs(0)))
    shapes = {path: v.get_value().shape for path, v in nnx.to_flat_state(nnx.state(abstract))}
    shardings = state_shardings(nnx.state(abstract), mesh)
    checked = 0
    for path, sharding in nnx.to_flat_state(shardings):
        spec = _expected(path)
        if scan_layers and path[:2] == ("model", "layers"):
            spec = P(None, *spec)  # the stacked layer axis is replicated
        assert sharding.get_value().is_equivalent_to(NamedSharding(mesh, spec), len(shapes[path])), path
        checked += 1
    assert checked > 40


def test_a_parameter_a_mesh_axis_does_not_divide_is_named():
    abstract = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(tiny_config(), rngs=nnx.Rngs(0)))
    with pytest.raises(ShardingError, match=r"parameter lm_head/kernel of shape \(64, 512\): dimension 1 \('vocab', "
                                            r"size 512\) does not split 3 ways .* runtime.rules.vocab="):
        state_shardings(nnx.state(abstract), make_mesh({"tensor": 3}, jax.devices()[:3]))


def _batch(config, rng):
    grid = np.array([(1, 4, 6)])
    image = [VISION_START] + [IMAGE_TOKEN] * 6 + [VISION_END]
    rows = [[1, 2] + image + [3], [4, 5, 6], [7] * 6, list(range(20, 30))]
    width = max(map(len, rows))
    ids = np.zeros((4, width), np.int64)
    mask = np.zeros((4, width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    pixels = rng.standard_normal((int(grid.prod()), config.vision.patch_dim)).astype(np.float32)
    return prepare_inputs(config, ids, mask, pixels, grid)


@pytest.mark.parametrize("batch_rows", [4, 2], ids=["batch4", "batch2_not_divisible"])
def test_mesh_forward_equals_single_device(mesh, batch_rows):
    config = tiny_config()
    model = random_model(config)
    ids, positions, mask, pixels, plan = _batch(config, np.random.default_rng(0))
    ids, positions, mask = ids[-batch_rows:], positions[:, -batch_rows:], mask[-batch_rows:]
    pixels, plan = (pixels, plan) if batch_rows == 4 else (None, None)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, positions, mask, pixels, plan):
        return nnx.merge(graphdef, state)(ids, positions, mask, pixels, plan).logits

    single = np.asarray(forward(state, ids, positions, mask, pixels, plan))
    with jax.set_mesh(mesh):
        sharded_state = jax.device_put(state, state_shardings(state, mesh))
        q = sharded_state["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
        assert q.sharding.spec == P("fsdp", "tensor") and len(q.addressable_shards) == 8
        logits = forward(sharded_state, ids, positions, mask, pixels, plan)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits), single, atol=1e-5, rtol=0)
