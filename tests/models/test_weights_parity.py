"""Checkpoints written by transformers load into jaxbiqa, and jaxbiqa's exports load back into transformers."""

import contextlib

import jax
import numpy as np
import pytest
from conftest import IMAGE_TOKEN, VISION_END, VISION_START, tiny_hf_config, torch_reference
from safetensors.numpy import load_file

from jaxbiqa.models.qwen2_5_vl import from_pretrained, save_pretrained
from jaxbiqa.sharding import make_mesh

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.parity

GRIDS = np.array([(1, 6, 10), (1, 4, 4)])  # 15 and 4 merge units; windows of 2x2 units do not divide the first


def _inputs():
    rng = np.random.default_rng(0)
    image = lambda g: [VISION_START] + [IMAGE_TOKEN] * (int(np.prod(g)) // 4) + [VISION_END]  # noqa: E731
    ids = np.array([[5, 6] + image(GRIDS[0]) + [7] + image(GRIDS[1]) + rng.integers(0, 480, 4).tolist()])
    pixels = rng.standard_normal((int(GRIDS.prod(-1).sum()), 3 * 2 * 14 * 14)).astype(np.float32)
    return ids, np.ones_like(ids), pixels


def _torch_logits(model, ids, mask, pixels):
    t_ids = torch.tensor(ids)
    with torch.no_grad():
        return model(input_ids=t_ids, attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels),
                     image_grid_thw=torch.tensor(GRIDS), mm_token_type_ids=(t_ids == IMAGE_TOKEN).int()).logits.numpy()


def _read_all(directory):
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors |= load_file(str(path))
    return tensors


@pytest.mark.parametrize("variant", ["plain", "scanned_mesh_sharded_files", "tied"])
def test_hf_checkpoint_round_trip_through_jaxbiqa(tmp_path, variant):
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = tiny_hf_config(tie_word_embeddings=variant == "tied")
    reference = torch_reference(hf, seed=4)
    reference.save_pretrained(tmp_path / "torch")
    ids, mask, pixels = _inputs()
    expected = _torch_logits(reference, ids, mask, pixels)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}) if variant.startswith("scanned") else None
    model = from_pretrained(tmp_path / "torch", mesh=mesh, scan_layers=mesh is not None)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        logits = np.asarray(model.forward(ids, mask, pixels, GRIDS))
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

    save_pretrained(model, tmp_path / "jax", max_shard_size="200KB" if mesh is not None else "5GB")
    assert (tmp_path / "jax" / "model.safetensors.index.json").exists() == (mesh is not None)
    original, exported = _read_all(tmp_path / "torch"), _read_all(tmp_path / "jax")
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)

    reloaded, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path / "jax", attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.dtype == torch.float32
    np.testing.assert_allclose(_torch_logits(reloaded.eval(), ids, mask, pixels), expected, atol=1e-4, rtol=0)


def test_bfloat16_export_loads_in_transformers_as_bfloat16(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch_reference(tiny_hf_config(), seed=1).save_pretrained(tmp_path / "torch")
    save_pretrained(from_pretrained(tmp_path / "torch", param_dtype="bfloat16"), tmp_path / "jax")
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "jax")
    assert reloaded.dtype == torch.bfloat16
    original = _read_all(tmp_path / "torch")
    for name, param in reloaded.state_dict().items():
        key = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        want = torch.from_numpy(original[key]).to(torch.bfloat16)
        assert torch.equal(param, want), key
