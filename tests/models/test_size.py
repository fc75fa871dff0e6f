"""The abstract size report against real sharded arrays and the released 7B parameter count."""

import json

import jax
import pytest
from flax import nnx
from test_weights import write_hf_checkpoint

from jaxbiqa.models.qwen2_5_vl import LoraConfig, from_pretrained
from jaxbiqa.models.qwen2_5_vl.size import qwen2_5_vl_7b, size_report
from jaxbiqa.sharding import make_mesh


@pytest.mark.parametrize("mesh_shape", [{"data": 2, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 8, "tensor": 1}])
def test_report_equals_the_bytes_of_the_instantiated_sharded_arrays(tmp_path, mesh_shape):
    write_hf_checkpoint(tmp_path)
    mesh = make_mesh(mesh_shape)
    model = from_pretrained(tmp_path, mesh=mesh, lora=LoraConfig(rank=4))
    report = size_report(model.config, mesh_shape)  # an abstract mesh of the same shape

    per_device = dict.fromkeys(mesh.devices.flat, 0)
    counts = {"vision": 0, "text": 0, "lora": 0}
    total = 0
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        array = variable.get_value()
        for shard in array.addressable_shards:
            per_device[shard.device] += shard.data.nbytes
        group = "lora" if isinstance(variable, nnx.LoRAParam) else "vision" if path[0] == "visual" else "text"
        counts[group] += array.size
        total += array.nbytes
    assert set(per_device.values()) == {report.bytes_per_device}
    assert report.bytes_per_device < total / 2  # sharding did split the parameters
    assert report.total_bytes == total
    assert (report.vision_params, report.text_params, report.lora_params) == (
        counts["vision"], counts["text"], counts["lora"])
    assert report.lora_params > 0 and report.total_params == sum(counts.values())


def _qwen2_5_vl_7b_count() -> tuple[int, int]:
    """(vision, text) parameters of Qwen2.5-VL-7B from its published dimensions."""
    h, layers, inter, vocab, kv = 3584, 28, 18944, 152064, 4 * 128
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    text = layers * per_layer + 2 * vocab * h + h  # embeddings, untied lm_head, final norm
    vh, depth, vi, out, merged = 1280, 32, 3420, 3584, 4 * 1280
    per_block = (vh * 3 * vh + 3 * vh) + (vh * vh + vh) + 2 * (vh * vi + vi) + (vi * vh + vh) + 2 * vh
    vision = 3 * 2 * 14 * 14 * vh + depth * per_block + vh + (merged * merged + merged) + (merged * out + out)
    return vision, text


def test_7b_report_matches_the_published_dimensions_without_allocating():
    before = {id(a) for a in jax.live_arrays()}
    report = size_report(qwen2_5_vl_7b(param_dtype="bfloat16"), {"data": 1, "fsdp": 8, "tensor": 1})
    assert not {id(a) for a in jax.live_arrays()} - before  # nothing was allocated
    vision, text = _qwen2_5_vl_7b_count()
    assert (report.vision_params, report.text_params, report.lora_params) == (vision, text, 0)
    assert report.total_params == 8_292_166_656  # the released model's count
    assert report.total_bytes == 2 * report.total_params
    # fsdp=8 splits every matrix (all have a dimension divisible by 8); norms and biases stay whole
    assert report.total_bytes / 8 < report.bytes_per_device < report.total_bytes / 8 * 1.01


def test_7b_report_on_a_mesh_larger_than_this_machine():
    report = size_report(qwen2_5_vl_7b(param_dtype="bfloat16", scan_layers=True),
                         {"data": 2, "fsdp": 16, "tensor": 4})
    assert report.total_params == sum(_qwen2_5_vl_7b_count())
    # fsdp x tensor = 64 ways for the decoder; some vision matrices have no tensor-sharded dimension
    assert report.total_bytes / 64 < report.bytes_per_device < report.total_bytes / 48
    assert report.mesh == {"data": 2, "fsdp": 16, "tensor": 4}


def test_size_cli(tmp_path, capsys):
    from jaxbiqa.cli import main

    tensors = write_hf_checkpoint(tmp_path)
    assert main(["convert", "--size", str(tmp_path / "config.json"), "--mesh", "fsdp=4,tensor=2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == sum(v.size for v in tensors.values())
    assert report["total_bytes"] == sum(v.nbytes for v in tensors.values()) and report["param_dtype"] == "float32"
    assert report["mesh"] == {"fsdp": 4, "tensor": 2}
    assert main(["convert", "--size", str(tmp_path), "--param-dtype", "bfloat16"]) == 0
    text = capsys.readouterr().out
    assert f"parameters: {sum(v.size for v in tensors.values()):,}" in text and "bfloat16" in text
    with pytest.raises(SystemExit):
        main(["convert", "--size", str(tmp_path), "--mesh", "fsdp=4,model=2"])
    assert "expected axis=size pairs" in capsys.readouterr().err


def test_without_a_mesh_one_device_holds_everything_and_sizes_must_be_positive():
    report = size_report(qwen2_5_vl_7b(scan_layers=True))
    assert report.bytes_per_device == report.total_bytes == 4 * report.total_params and report.mesh == {}
    with pytest.raises(ValueError, match="mesh axis sizes must be >= 1"):
        size_report(qwen2_5_vl_7b(scan_layers=True), {"fsdp": -1})
