"""Hugging Face checkpoints in and out (weights.py) on checkpoints written with numpy, no torch needed.

The tensors are laid out here by hand from the released checkpoints' key names and torch shapes,
independently of weights.TABLE.
"""

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import tiny_hf_config
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from jaxbiqa.models.qwen2_5_vl import LoraConfig, ModelConfig, from_hf, from_pretrained, save_pretrained
from jaxbiqa.models.qwen2_5_vl.weights import CheckpointError, parse_size
from jaxbiqa.sharding import make_mesh, sharding_for


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Key -> torch shape of every tensor of a released-layout Qwen2.5-VL checkpoint."""
    t, v = config.text, config.vision
    vh, vi, th, kv = v.hidden_size, v.intermediate_size, t.hidden_size, t.num_key_value_heads * t.head_dim
    shapes = {"visual.patch_embed.proj.weight": (vh, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)}
    for i in range(v.depth):
        b = f"visual.blocks.{i}"
        shapes |= {f"{b}.norm1.weight": (vh,), f"{b}.norm2.weight": (vh,),
                   f"{b}.attn.qkv.weight": (3 * vh, vh), f"{b}.attn.qkv.bias": (3 * vh,),
                   f"{b}.attn.proj.weight": (vh, vh), f"{b}.attn.proj.bias": (vh,),
                   f"{b}.mlp.gate_proj.weight": (vi, vh), f"{b}.mlp.gate_proj.bias": (vi,),
                   f"{b}.mlp.up_proj.weight": (vi, vh), f"{b}.mlp.up_proj.bias": (vi,),
                   f"{b}.mlp.down_proj.weight": (vh, vi), f"{b}.mlp.down_proj.bias": (vh,)}
    merged = vh * v.spatial_merge_size**2
    shapes |= {"visual.merger.ln_q.weight": (vh,), "visual.merger.mlp.0.weight": (merged, merged),
               "visual.merger.mlp.0.bias": (merged,), "visual.merger.mlp.2.weight": (v.out_hidden_size, merged),
               "visual.merger.mlp.2.bias": (v.out_hidden_size,), "model.embed_tokens.weight": (t.vocab_size, th),
               "model.norm.weight": (th,)}
    for i in range(t.num_hidden_layers):
        b = f"model.layers.{i}"
        shapes |= {f"{b}.self_attn.q_proj.weight": (th, th), f"{b}.self_attn.q_proj.bias": (th,),
                   f"{b}.self_attn.k_proj.weight": (kv, th), f"{b}.self_attn.k_proj.bias": (kv,),
                   f"{b}.self_attn.v_proj.weight": (kv, th), f"{b}.self_attn.v_proj.bias": (kv,),
                   f"{b}.self_attn.o_proj.weight": (th, th),
                   f"{b}.mlp.gate_proj.weight": (t.intermediate_size, th),
                   f"{b}.mlp.up_proj.weight": (t.intermediate_size, th),
                   f"{b}.mlp.down_proj.weight": (th, t.intermediate_size),
                   f"{b}.input_layernorm.weight": (th,), f"{b}.post_attention_layernorm.weight": (th,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (t.vocab_size, th)
    return shapes


def write_hf_checkpoint(directory: Path, seed: int = 0, dtype=np.float32, files: int = 1,
                        tensors: dict[str, np.ndarray] | None = None, **overrides) -> dict[str, np.ndarray]:
    """A random checkpoint of `tiny_hf_config(**overrides)` in `directory` (`files` > 1: sharded with an index)."""
    hf = tiny_hf_config(**overrides)
    if tensors is None:
        rng = np.random.default_rng(seed)
        tensors = {k: rng.standard_normal(s, np.float32).astype(dtype) for k, s in hf_shapes(from_hf(hf)).items()}
    directory.mkdir(parents=True, exist_ok=True)
    config = hf.to_dict()
    config["dtype"] = np.dtype(dtype).name
    (directory / "config.json").write_text(json.dumps(config))
    keys = sorted(tensors)
    if files == 1:
        save_file({k: tensors[k] for k in keys}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = [f"part-{i}.safetensors" for i in range(files)]
        weight_map = {k: names[i % files] for i, k in enumerate(keys)}
        for name in names:
            save_file({k: tensors[k] for k in keys if weight_map[k] == name}, str(directory / name))
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def _value(model, path: str) -> np.ndarray:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return np.asarray(node[...])


def test_values_land_in_the_right_parameters_with_the_right_transform(tmp_path):
    tensors = write_hf_checkpoint(tmp_path)
    model = from_pretrained(tmp_path)
    vision = model.config.vision
    np.testing.assert_array_equal(_value(model, "visual.patch_embed.proj.kernel"),
                                  tensors["visual.patch_embed.proj.weight"].reshape(vision.hidden_size, -1).T)
    checks = {  # NNX path -> (HF key, transpose?)
        "visual.blocks.2.attn.qkv.kernel": ("visual.blocks.2.attn.qkv.weight", True),
        "visual.blocks.1.attn.qkv.bias": ("visual.blocks.1.attn.qkv.bias", False),
        "visual.blocks.0.mlp.down_proj.kernel": ("visual.blocks.0.mlp.down_proj.weight", True),
        "visual.blocks.1.norm2.scale": ("visual.blocks.1.norm2.weight", False),
        "visual.merger.mlp_0.kernel": ("visual.merger.mlp.0.weight", True),
        "visual.merger.mlp_2.bias": ("visual.merger.mlp.2.bias", False),
        "visual.merger.ln_q.scale": ("visual.merger.ln_q.weight", False),
        "model.embed_tokens.embedding": ("model.embed_tokens.weight", False),
        "model.layers.1.self_attn.k_proj.kernel": ("model.layers.1.self_attn.k_proj.weight", True),
        "model.layers.0.self_attn.v_proj.bias": ("model.layers.0.self_attn.v_proj.bias", False),
        "model.layers.1.mlp.up_proj.kernel": ("model.layers.1.mlp.up_proj.weight", True),
        "model.layers.0.post_attention_layernorm.scale": ("model.layers.0.post_attention_layernorm.weight", False),
        "model.norm.scale": ("model.norm.weight", False),
        "lm_head.kernel": ("lm_head.weight", True),
    }
    for path, (key, transpose) in checks.items():
        np.testing.assert_array_equal(_value(model, path), tensors[key].T if transpose else tensors[key], err_msg=path)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip_is_bit_identical(tmp_path, scan_layers, dtype):
    tensors = write_hf_checkpoint(tmp_path / "in", dtype=dtype)
    model = from_pretrained(tmp_path / "in", scan_layers=scan_layers)
    assert model.config.param_dtype == np.dtype(dtype).name  # the checkpoint's dtype by default
    save_pretrained(model, tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(out) == sorted(tensors)
    for key, value in tensors.items():
        assert out[key].dtype == value.dtype, key
        np.testing.assert_array_equal(out[key].view(np.uint8), value.view(np.uint8), err_msg=key)
    assert from_hf(tmp_path / "out" / "config.json").text == model.config.text


def test_param_dtype_casts_the_checkpoint(tmp_path):
    tensors = write_hf_checkpoint(tmp_path)
    model = from_pretrained(tmp_path, param_dtype="bfloat16")
    assert (model.config.param_dtype, model.config.dtype) == ("bfloat16", "bfloat16")
    norm = model.model.norm.scale[...]
    assert norm.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(norm), tensors["model.norm.weight"].astype(ml_dtypes.bfloat16))


def test_transformers_internal_key_layout_loads(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "released")
    internal = {k.replace("model.", "model.language_model.", 1) if k.startswith("model.")
                else "model." + k if k.startswith("visual.") else k: v for k, v in tensors.items()}
    assert "model.visual.merger.mlp.0.weight" in internal and "model.language_model.norm.weight" in internal
    write_hf_checkpoint(tmp_path / "internal", tensors=internal)
    a, b = from_pretrained(tmp_path / "released"), from_pretrained(tmp_path / "internal")
    pairs = zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)), strict=True)
    for (path, x), (_, y) in pairs:
        np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()), err_msg=str(path))


def test_sharded_index_checkpoints_load_and_are_written(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "in", files=3)
    model = from_pretrained(tmp_path / "in")
    np.testing.assert_array_equal(_value(model, "model.layers.1.mlp.down_proj.kernel"),
                                  tensors["model.layers.1.mlp.down_proj.weight"].T)
    written = save_pretrained(model, tmp_path / "out", max_shard_size="150KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
    for name in files:
        part = load_file(str(tmp_path / "out" / name))
        assert sum(v.nbytes for v in part.values()) <= parse_size("150KB") or len(part) == 1
        for key, value in part.items():
            assert index["weight_map"][key] == name
            np.testing.assert_array_equal(value, tensors[key], err_msg=key)
    assert {p.name for p in written} == {*files, "model.safetensors.index.json", "config.json"}
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_mesh_load_gives_the_rules_table_shardings(tmp_path):
    write_hf_checkpoint(tmp_path)
    plain = from_pretrained(tmp_path)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    for scan_layers in (False, True):
        model = from_pretrained(tmp_path, mesh=mesh, scan_layers=scan_layers)
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            value = variable.get_value()
            expected = sharding_for(value.shape, variable.get_metadata()["out_sharding"], mesh)
            assert value.sharding == expected, path
        # what DEFAULT_RULES say for a few parameters (embed -> fsdp, heads/mlp/vocab -> tensor)
        layer = model.model.layers if scan_layers else model.model.layers[0]
        lead = (None,) if scan_layers else ()
        assert layer.self_attn.q_proj.kernel[...].sharding.spec == P(*lead, "fsdp", "tensor")
        assert layer.mlp.down_proj.kernel[...].sharding.spec == P(*lead, "tensor", "fsdp")
        assert layer.input_layernorm.scale[...].sharding.spec == P(*lead, None)
        assert model.model.embed_tokens.embedding[...].sharding.spec == P("tensor", "fsdp")
        assert model.lm_head.kernel[...].sharding.spec == P("fsdp", "tensor")
        np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]), np.asarray(plain.lm_head.kernel[...]))
        q = np.asarray(layer.self_attn.q_proj.kernel[...])
        np.testing.assert_array_equal(q[1] if scan_layers else q, np.asarray(plain.model.layers[1 if scan_layers else 0]
                                                                           .self_attn.q_proj.kernel[...]))


def _load_error(tmp_path, tensors) -> str:
    write_hf_checkpoint(tmp_path / "bad", tensors=tensors)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "bad")
    return str(err.value)


def test_missing_tensor_is_named(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "ok")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    message = _load_error(tmp_path, tensors)
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in message
    assert "model.layers.1.mlp.up_proj.kernel" in message


def test_unused_tensor_is_named_but_rotary_buffers_are_ignored(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "ok")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    tensors["visual.rotary_pos_emb.inv_freq"] = np.ones(4, np.float32)
    write_hf_checkpoint(tmp_path / "buffers", tensors=tensors)
    from_pretrained(tmp_path / "buffers")
    tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"]
    assert "unused tensor 'model.layers.2.mlp.up_proj.weight'" in _load_error(tmp_path, tensors)


def test_shape_mismatch_is_named(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "ok")
    q, k = (tensors[f"model.layers.0.self_attn.{p}_proj.weight"] for p in ("q", "k"))
    assert q.shape != k.shape
    tensors["model.layers.0.self_attn.k_proj.weight"] = q
    message = _load_error(tmp_path, tensors)
    assert f"shape mismatch for 'model.layers.0.self_attn.k_proj.weight': checkpoint {q.shape}" in message
    assert f"expects {k.shape}" in message


def test_a_key_in_both_layouts_is_an_error(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "ok")
    tensors["model.language_model.norm.weight"] = tensors["model.norm.weight"]
    assert "'model.norm.weight' appears twice" in _load_error(tmp_path, tensors)


def test_tied_embeddings_have_no_lm_head(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "in", tie_word_embeddings=True)
    assert "lm_head.weight" not in tensors
    model = from_pretrained(tmp_path / "in")
    assert model.lm_head is None
    save_pretrained(model, tmp_path / "out")
    assert sorted(load_file(str(tmp_path / "out" / "model.safetensors"))) == sorted(tensors)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True


def test_lora_adapters_are_initialised_on_load_and_merged_on_export(tmp_path):
    tensors = write_hf_checkpoint(tmp_path / "in")
    lora = LoraConfig(rank=4, alpha=8.0, target_modules=("q_proj", "down_proj"))
    model = from_pretrained(tmp_path / "in", lora=lora)
    q = model.model.layers[1].self_attn.q_proj
    assert q.lora_a[...].shape == (model.config.text.hidden_size, 4) and not np.asarray(q.lora_b[...]).any()
    b = np.random.default_rng(3).standard_normal(q.lora_b[...].shape).astype(np.float32)
    q.lora_b[...] = b
    save_pretrained(model, tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    merged = tensors["model.layers.1.self_attn.q_proj.weight"].T + np.asarray(q.lora_a[...]) @ b * (8.0 / 4)
    np.testing.assert_allclose(out["model.layers.1.self_attn.q_proj.weight"], merged.T, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["model.layers.0.self_attn.q_proj.weight"],  # B still zero there
                                  tensors["model.layers.0.self_attn.q_proj.weight"])
    assert not any("lora" in k for k in out)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config().to_dict()))
    with pytest.raises(CheckpointError, match=rf"{tmp_path}: no weights \(model.safetensors .*it holds config.json$"):
        from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"holds config.json, pytorch_model.bin; PyTorch weights "
                                              r"\(pytorch_model.bin\) are not read: .*save_pretrained"):
        from_pretrained(tmp_path)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("five gigs")


def test_convert_cli_checks_and_re_exports(tmp_path, capsys):
    from jaxbiqa.cli import main

    tensors = write_hf_checkpoint(tmp_path / "in", files=2)
    assert main(["convert", "--from-hf", str(tmp_path / "in"), "--to-hf", str(tmp_path / "out"),
                 "--mesh", "data=2,fsdp=2,tensor=2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == sum(v.size for v in tensors.values())
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(np.array_equal(out[k], v) for k, v in tensors.items()) and len(out) == len(tensors)

    del tensors["model.norm.weight"]
    write_hf_checkpoint(tmp_path / "bad", tensors=tensors)
    assert main(["convert", "--from-hf", str(tmp_path / "bad")]) == 2
    assert "missing tensor 'model.norm.weight'" in capsys.readouterr().err


def test_failed_export_keeps_the_old_weights(tmp_path):
    write_hf_checkpoint(tmp_path / "in")
    model = from_pretrained(tmp_path / "in")
    save_pretrained(model, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_pretrained(model, tmp_path / "out", add_files=disk_full)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # nothing half-written beside it


def test_weights_from_and_to_a_bucket(tmp_path, bucket):
    tensors = write_hf_checkpoint(tmp_path / "in", files=2)
    save_pretrained(from_pretrained(tmp_path / "in"), f"{bucket}/policy", max_shard_size="150KB")
    model = from_pretrained(f"{bucket}/policy")
    for key in ("model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"):
        name = key.replace(".weight", ".kernel" if "proj" in key else ".embedding")
        expected = tensors[key].T if "proj" in key else tensors[key]
        np.testing.assert_array_equal(_value(model, name), expected)


def test_exported_weights_follow_the_umask(tmp_path):
    import os
    import stat

    write_hf_checkpoint(tmp_path / "in")
    old = os.umask(0o022)
    try:
        written = save_pretrained(from_pretrained(tmp_path / "in"), tmp_path / "out")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(os.stat(path).st_mode) for path in written} == {0o644}
