"""M-RoPE angles and host-side position ids against transformers' Qwen2.5-VL."""

import numpy as np
import pytest
from conftest import IMAGE_TOKEN, PAD, VISION_END, VISION_START, tiny_hf_config

from jaxbiqa.models.qwen2_5_vl.config import from_hf
from jaxbiqa.models.qwen2_5_vl.rope import get_rope_index, mrope_cos_sin, text_positions
from jaxbiqa.processing import pad_rows


def _image(grid, merge=2):
    return [VISION_START] + [IMAGE_TOKEN] * (int(np.prod(grid)) // merge**2) + [VISION_END]


def _left_pad(rows):
    return tuple(a.astype(np.int64) for a in pad_rows(rows, PAD))


CASES = {
    # row 0: two images of different sizes (one non-square); row 1: text only, left padded
    "two_images_and_text_row": ([[1, 2] + _image((1, 4, 6)) + [3] + _image((1, 6, 4)) + [4, 5], [7, 8, 9]],
                                [(1, 4, 6), (1, 6, 4)]),
    # one image per row, different sizes, different amounts of padding
    "image_per_row": ([[5] + _image((1, 2, 2)) + [6, 7, 8, 9], [1, 2, 3] + _image((1, 8, 10)) + [4]],
                      [(1, 2, 2), (1, 8, 10)]),
    # image at the very start, text-only row first
    "image_first": ([[3, 3, 3, 3], _image((1, 6, 6)) + [1]], [(1, 6, 6)]),
    "text_only": ([[1, 2, 3], [4, 5, 6, 7, 8, 9]], None),
}


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(CASES))
def test_get_rope_index_matches_transformers(case):
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    hf = tiny_hf_config()
    rows, grids = CASES[case]
    ids, mask = _left_pad(rows)
    grid = None if grids is None else np.array(grids)
    positions, deltas = get_rope_index(ids, grid, mask, from_hf(hf))

    torch_ids = torch.tensor(ids)
    ref_pos, ref_deltas = Qwen2_5_VLModel.get_rope_index(
        type("M", (), {"config": hf, "get_vision_position_ids": Qwen2_5_VLModel.get_vision_position_ids})(),
        torch_ids, mm_token_type_ids=(torch_ids == IMAGE_TOKEN).int(),
        image_grid_thw=None if grid is None else torch.tensor(grid), attention_mask=torch.tensor(mask))
    np.testing.assert_array_equal(positions, ref_pos.numpy())
    np.testing.assert_array_equal(deltas, ref_deltas.numpy())
    assert positions.shape == (3, *ids.shape) and deltas.shape == (len(rows), 1)


def test_text_positions_equal_rope_index_without_images():
    ids, mask = _left_pad([[1, 2, 3], [4, 5, 6, 7, 8, 9], [1]])
    config = from_hf(tiny_hf_config().to_dict())
    positions, deltas = get_rope_index(ids, None, mask, config)
    np.testing.assert_array_equal(positions, text_positions(mask))
    np.testing.assert_array_equal(deltas, 0)
    np.testing.assert_array_equal(positions[0, 0], [0, 0, 0, 0, 1, 2])


def test_rope_deltas_continue_positions_after_an_image():
    config = from_hf(tiny_hf_config().to_dict())
    ids, mask = _left_pad([[1] + _image((1, 4, 8)) + [2]])
    positions, deltas = get_rope_index(ids, np.array([(1, 4, 8)]), mask, config)
    # the next token continues right after the largest position so far
    assert int(deltas[0, 0]) + mask.sum() == positions.max() + 1
    extended = np.concatenate([mask, np.ones((1, 1), int)], axis=1)
    assert text_positions(extended, deltas)[:, 0, -1].tolist() == [positions.max() + 1] * 3


def test_get_rope_index_rejects_bad_inputs():
    config = from_hf(tiny_hf_config().to_dict())
    ids, mask = _left_pad([[1] + _image((1, 4, 4)) + [2]])
    with pytest.raises(ValueError, match="grid \\[1, 4, 6\\] needs 6 <\\|image_pad\\|> tokens, found a run of 4"):
        get_rope_index(ids, np.array([(1, 4, 6)]), mask, config)
    with pytest.raises(ValueError, match="image_grid_thw has 2 images"):
        get_rope_index(ids, np.array([(1, 4, 4), (1, 2, 2)]), mask, config)
    with pytest.raises(ValueError, match="more <\\|image_pad\\|> runs"):
        get_rope_index(ids, None, mask, config)
    with pytest.raises(NotImplementedError, match="video"):
        get_rope_index(ids, np.array([(1, 4, 4)]), mask, config, video_grid_thw=np.array([(2, 4, 4)]))


@pytest.mark.parity
def test_mrope_cos_sin_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    hf = tiny_hf_config(text_config=dict(hidden_size=96, num_attention_heads=4,  # head_dim 24
                                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                          "mrope_section": [4, 4, 4]}))
    positions = np.random.default_rng(0).integers(0, 300, size=(3, 2, 7))
    cos, sin = mrope_cos_sin(positions, 24, 1e6, (4, 4, 4))
    ref_cos, ref_sin = Qwen2_5_VLRotaryEmbedding(hf.text_config)(torch.zeros(1), torch.tensor(positions))
    # float32 angles of a few hundred radians carry ~1e-6 rounding noise; a wrong band layout is O(1) off
    np.testing.assert_allclose(np.asarray(cos), ref_cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(sin), ref_sin.numpy(), atol=1e-5)
