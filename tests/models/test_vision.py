"""Vision tower behaviour that needs no reference model: the host plan, locality of window
attention, independence of images in one call, dtype policy, remat, sharding, weight layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxbiqa.models.qwen2_5_vl.config import VisionConfig
from jaxbiqa.models.qwen2_5_vl.vision import (
    VisionTower, conv3d_weight_to_kernel, kernel_to_conv3d_weight, vision_plan)
from jaxbiqa.sharding import DEFAULT_RULES, logical_to_spec, make_mesh, state_shardings

TINY = VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, window_size=56, out_hidden_size=24,
                    fullatt_block_indexes=(1,))


def forward(tower: VisionTower, pixels: np.ndarray, grid: np.ndarray, config: VisionConfig = TINY) -> np.ndarray:
    return np.asarray(jax.jit(lambda m, x, p: m(x, p))(tower, pixels, vision_plan(np.asarray(grid), config)))


def random_pixels(grid, seed: int = 0, config: VisionConfig = TINY) -> np.ndarray:
    n = int(np.asarray(grid).prod(axis=1).sum())
    return np.random.default_rng(seed).normal(size=(n, config.patch_dim)).astype(np.float32)


# ------------------------------------------------------------------------------------------ plan

grids = st.lists(st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(grids=grids, window_units=st.integers(1, 4))
def test_plan_groups_partition_the_patches(grids, window_units):
    config = VisionConfig(window_size=window_units * 28)
    grid = np.array([(t, 2 * h, 2 * w) for t, h, w in grids])
    n = int(grid.prod(axis=1).sum())

    plan = vision_plan(grid, config)

    assert plan.num_patches == n and plan.num_tokens == n // 4
    np.testing.assert_array_equal(plan.window_index[plan.reverse_index], np.arange(n // 4))
    for groups, lengths in ((plan.window, None), (plan.full, np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))):
        width = groups.index.shape[1]
        valid = np.arange(width)[None, :] < groups.lengths[:, None]
        # every patch is in exactly one group, groups are contiguous runs in order, padding repeats the last member
        np.testing.assert_array_equal(groups.index[valid], np.arange(n))
        np.testing.assert_array_equal(groups.index.ravel()[groups.slot], np.arange(n))
        last = groups.index[np.arange(len(groups.lengths)), groups.lengths - 1]
        np.testing.assert_array_equal(np.where(valid, groups.index, last[:, None]), groups.index)
        if lengths is not None:
            np.testing.assert_array_equal(groups.lengths, lengths)
    assert plan.window.index.shape[1] == (window_units * 2) ** 2
    assert (plan.window.lengths % 4 == 0).all()


def test_plan_windows_cut_at_the_edges():
    # 3x5 merge units with 2x2-unit windows: windows of 4, 4, 2 units, then 2, 2, 1
    plan = vision_plan(np.array([[1, 6, 10]]), TINY)
    np.testing.assert_array_equal(plan.window.lengths // 4, [4, 4, 2, 2, 2, 1])
    np.testing.assert_array_equal(plan.window_index[:8], [0, 1, 5, 6, 2, 3, 7, 8])
    # patch positions are (row, column) on the patch grid, merge unit by merge unit
    np.testing.assert_array_equal(plan.position_ids[:8], [[0, 0], [0, 1], [1, 0], [1, 1],
                                                          [0, 2], [0, 3], [1, 2], [1, 3]])


@pytest.mark.parametrize("grid, message", [
    (np.array([1, 4, 4]), "shape"),
    (np.array([[1, 0, 4]]), "positive"),
    (np.array([[1.0, 4.0, 4.0]]), "integers"),
    (np.array([[1, 4, 5]]), "multiples of spatial_merge_size"),
])
def test_plan_rejects_bad_grids(grid, message):
    with pytest.raises(ValueError, match=message):
        vision_plan(grid, TINY)


def test_plan_rejects_window_smaller_than_a_merge_unit():
    with pytest.raises(ValueError, match="window_size=14"):
        vision_plan(np.array([[1, 4, 4]]), VisionConfig(window_size=14))


# ------------------------------------------------------------------------------ patch embedding

def test_conv3d_weight_kernel_conversion():
    config = TINY
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(config.hidden_size, 3, 2, 14, 14)).astype(np.float32)
    patches = rng.normal(size=(5, 3, 2, 14, 14)).astype(np.float32)
    conv = np.einsum("ecthw,ncthw->ne", weight, patches)  # stride = kernel: one output per patch

    kernel = conv3d_weight_to_kernel(weight)

    np.testing.assert_allclose(patches.reshape(5, -1) @ kernel, conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(kernel_to_conv3d_weight(kernel, config), weight)
    with pytest.raises(ValueError, match="expected"):
        kernel_to_conv3d_weight(kernel[1:], config)
    with pytest.raises(ValueError, match="Conv3d"):
        conv3d_weight_to_kernel(weight[0])


# ----------------------------------------------------------------------------------- behaviour

@pytest.fixture(scope="module")
def tower():
    return VisionTower(TINY, rngs=nnx.Rngs(0))


def test_wrong_number_of_patches_raises(tower):
    plan = vision_plan(np.array([[1, 4, 4]]), TINY)
    with pytest.raises(ValueError, match=r"\(16, 1176\)"):
        tower(jnp.zeros((20, TINY.patch_dim)), plan)


def test_window_attention_only_mixes_within_a_window():
    config = VisionConfig(**{**TINY.__dict__, "fullatt_block_indexes": ()})
    tower = VisionTower(config, rngs=nnx.Rngs(1))
    grid = np.array([[1, 6, 10]])  # 3x5 merge units, windows of 2x2 units
    pixels = random_pixels(grid)
    base = forward(tower, pixels, grid, config)
    changed = pixels.copy()
    changed[4 * 7: 4 * 8] += 1.0  # merge unit 7 = row 1, column 2: the window of units {2, 3, 7, 8}

    diff = np.abs(forward(tower, changed, grid, config) - base).max(axis=1)

    assert set(np.flatnonzero(diff > 1e-6)) == {2, 3, 7, 8}


def test_images_in_one_call_are_independent(tower):
    grids = [np.array([[1, 6, 10]]), np.array([[1, 8, 4]]), np.array([[2, 4, 4]])]
    pixels = [random_pixels(g, seed=i) for i, g in enumerate(grids)]

    together = forward(tower, np.concatenate(pixels), np.concatenate(grids))
    alone = np.concatenate([forward(tower, p, g) for p, g in zip(pixels, grids)])

    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_bfloat16_policy_stores_and_computes_in_bfloat16(tower):
    grid = np.array([[1, 6, 10]])
    pixels = random_pixels(grid)
    half = VisionTower(TINY, dtype="bfloat16", param_dtype="bfloat16", rngs=nnx.Rngs(0))
    nnx.update(half, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(tower, nnx.Param)))
    dtypes = {v.dtype for v in jax.tree.leaves(nnx.state(half, nnx.Param))}

    out = jax.jit(lambda m, x, p: m(x, p))(half, pixels, vision_plan(grid, TINY))

    assert dtypes == {jnp.dtype(jnp.bfloat16)} and out.dtype == jnp.bfloat16
    reference = forward(tower, pixels, grid)
    scale = np.abs(reference).max()
    assert np.abs(np.asarray(out, np.float32) - reference).max() < 0.05 * scale


def test_remat_gives_the_same_values_and_gradients():
    grid = np.array([[1, 6, 10], [1, 4, 4]])
    pixels = random_pixels(grid)
    plan = vision_plan(grid, TINY)

    def loss_and_grad(remat: bool):
        model = VisionTower(TINY, remat=remat, rngs=nnx.Rngs(0))
        loss = lambda m: jnp.sum(m(pixels, plan) ** 2)  # noqa: E731
        return nnx.jit(nnx.value_and_grad(loss))(model)

    (loss_a, grad_a), (loss_b, grad_b) = loss_and_grad(False), loss_and_grad(True)

    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad_a, grad_b)


def test_every_parameter_carries_logical_axis_names(tower):
    state = nnx.state(tower, nnx.Param)
    for path, variable in jax.tree.leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable[...].ndim, (path, names)
        logical_to_spec(names)  # every name has a rule
    block = tower.blocks[0]
    assert block.mlp.gate_proj.kernel.get_metadata()["out_sharding"] == ("vision_embed", "vision_mlp")
    assert tower.patch_embed.proj.kernel.get_metadata()["out_sharding"] == ("patch", "vision_embed")


def test_mesh_forward_matches_single_device(tower):
    grid = np.array([[1, 6, 10], [1, 4, 8]])
    pixels = random_pixels(grid)
    plan = vision_plan(grid, TINY)
    expected = forward(tower, pixels, grid)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, state = nnx.split(tower)

    with jax.set_mesh(mesh):
        shardings = state_shardings(state, mesh)
        sharded = jax.device_put(state, shardings)
        out = jax.jit(lambda s, x, p: nnx.merge(graphdef, s)(x, p))(sharded, pixels, plan)

    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-5)
    gate = sharded["blocks"][0]["mlp"]["gate_proj"]["kernel"]
    assert gate.sharding.spec == logical_to_spec(("vision_embed", "vision_mlp"), DEFAULT_RULES)
