"""The vision tower and its host-side plan against transformers' PyTorch Qwen2.5-VL vision tower.

Pixel inputs come from real photos (scikit-image's bundled images) through the real image
processor, so the patch layout is exactly what transformers' model receives.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import pytest
from conftest import tiny_hf_config, torch_reference
from hypothesis import given, settings
from hypothesis import strategies as st

import jax
from flax import nnx

from jaxbiqa.models.qwen2_5_vl.config import VisionConfig, from_hf
from jaxbiqa.models.qwen2_5_vl.vision import VisionTower, conv3d_weight_to_kernel, vision_plan
from jaxbiqa.processing import make_image_processor

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
skdata = pytest.importorskip("skimage.data")


def load_torch_visual(tower: VisionTower, visual) -> None:
    """Copy a transformers vision tower's weights into `tower` (test-local; weights.py is the real loader)."""
    sd = {k: v.detach().numpy() for k, v in visual.state_dict().items()}
    tower.patch_embed.proj.kernel[...] = conv3d_weight_to_kernel(sd.pop("patch_embed.proj.weight"))

    def linear(module, name):
        module.kernel[...] = sd.pop(f"{name}.weight").T
        module.bias[...] = sd.pop(f"{name}.bias")

    for i, block in enumerate(tower.blocks):
        block.norm1.scale[...] = sd.pop(f"blocks.{i}.norm1.weight")
        block.norm2.scale[...] = sd.pop(f"blocks.{i}.norm2.weight")
        for name in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            linear(attrgetter(name)(block), f"blocks.{i}.{name}")
    tower.merger.ln_q.scale[...] = sd.pop("merger.ln_q.weight")
    linear(tower.merger.mlp_0, "merger.mlp.0")
    linear(tower.merger.mlp_2, "merger.mlp.2")
    assert not sd, f"torch weights left unused: {sorted(sd)}"


def photo_batch(images, max_tokens: int):
    processor = make_image_processor(max_pixels=max_tokens * 28 * 28)
    out = processor(images=images, return_tensors="np")
    return np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"])


# Config A: the conftest defaults, windows of 2x2 merge units, block 1 full attention.
# Config B: wider, windows of 4x4 merge units (the released 112-pixel window), two full blocks.
CONFIGS = {
    "A": {},
    "B": dict(depth=4, hidden_size=64, intermediate_size=80, num_heads=4, window_size=112, out_hidden_size=48,
              fullatt_block_indexes=[0, 3]),
}

CASES = {
    # astronaut (square) at <= 40 tokens: 6x6 merge units, tiled exactly by A's windows but not by B's
    "square": (lambda: [skdata.astronaut()], 40),
    # chelsea is 300x451: a non-square grid whose unit rows/columns the windows do not divide
    "non_square": (lambda: [skdata.chelsea()], 60),
    # two images of different sizes (and aspect ratios) concatenated in one call
    "two_images": (lambda: [skdata.coffee(), skdata.astronaut()], 48),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def towers(request):
    hf = tiny_hf_config(vision_config=CONFIGS[request.param])
    reference = torch_reference(hf, seed=3).model.visual
    config = from_hf(hf).vision
    tower = VisionTower(config, rngs=nnx.Rngs(0))
    load_torch_visual(tower, reference)
    return config, tower, reference


@pytest.mark.parametrize("case", sorted(CASES))
def test_vision_features_match_transformers(towers, case):
    config, tower, reference = towers
    images, max_tokens = CASES[case]
    pixels, grid = photo_batch(images(), max_tokens)
    side = config.window_size // 28
    units = grid[:, 1:] // 2
    if case == "non_square":
        assert grid[0, 1] != grid[0, 2] and (units % side).any(), "the case must exercise cut-off windows"
    if case == "two_images":
        assert len(grid) == 2 and (grid[0] != grid[1]).any(), "the case needs two image sizes"
    with torch.no_grad():
        expected = reference(torch.from_numpy(pixels), grid_thw=torch.from_numpy(grid)).pooler_output.numpy()

    got = np.asarray(jax.jit(lambda m, x, p: m(x, p))(tower, pixels, vision_plan(grid, config)))

    assert got.shape == expected.shape == (grid.prod(axis=1).sum() // 4, config.out_hidden_size)
    assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()


def _transformers_plan(grid: np.ndarray, config: VisionConfig):
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

    grid_t = torch.from_numpy(grid)
    window_index, cu_windows = get_vision_window_index(grid_t, config.spatial_merge_size, config.window_size,
                                                       config.patch_size)
    positions = get_vision_position_ids(grid_t, config.spatial_merge_size).numpy()
    unit = config.spatial_merge_size**2
    positions = positions.reshape(-1, unit, 2)[window_index.numpy()].reshape(-1, 2)
    return window_index.numpy(), cu_windows.numpy(), get_vision_cu_seqlens(grid_t).numpy(), positions


grids = st.lists(st.tuples(st.integers(1, 2), st.integers(1, 13), st.integers(1, 13)), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(grids=grids, window_units=st.integers(1, 5))
def test_vision_plan_matches_transformers_window_index(grids, window_units):
    config = VisionConfig(window_size=window_units * 28)
    grid = np.array([(t, 2 * h, 2 * w) for t, h, w in grids], dtype=np.int64)
    window_index, cu_windows, cu_full, positions = _transformers_plan(grid, config)

    plan = vision_plan(grid, config)

    np.testing.assert_array_equal(plan.window_index, window_index)
    np.testing.assert_array_equal(plan.reverse_index, np.argsort(window_index))
    np.testing.assert_array_equal(np.concatenate([[0], np.cumsum(plan.window.lengths)]), cu_windows)
    np.testing.assert_array_equal(np.concatenate([[0], np.cumsum(plan.full.lengths)]), cu_full)
    np.testing.assert_array_equal(plan.position_ids, positions)
