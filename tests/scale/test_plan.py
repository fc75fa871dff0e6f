"""jaxbiqa.plan against real arrays: the exact parts equal the bytes of instantiated parameters,
optimizer state and KV cache on the 8-device CPU mesh; the activation estimate tracks XLA's own
buffer assignment; the `jaxbiqa plan` command."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxbiqa import plan as planning
from jaxbiqa import plan_cmd
from jaxbiqa.cli import main
from jaxbiqa.models.qwen2_5_vl import (LoraConfig, ModelConfig, Qwen2_5_VLForConditionalGeneration, TextConfig,
                                      VisionConfig, init_cache, token_logprobs, trainable_filter)
from jaxbiqa.models.qwen2_5_vl.size import size_report
from jaxbiqa.sharding import make_mesh, state_shardings

TEXT = TextConfig(vocab_size=512, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, mrope_section=(2, 3, 3), rope_theta=10000.0)
VISION = VisionConfig(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, window_size=56,
                      out_hidden_size=64, fullatt_block_indexes=(1,))


def tiny(**runtime) -> ModelConfig:
    return ModelConfig(text=TEXT, vision=VISION, image_token_id=498, video_token_id=499, vision_start_token_id=496,
                       vision_end_token_id=497, **runtime)


def per_device(tree) -> int:
    """The largest number of bytes any device holds of the arrays in `tree` (checking they are balanced)."""
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    assert len(set(totals.values())) == 1, totals
    return next(iter(totals.values()))


CASES = [
    ({"data": 2, "fsdp": 2, "tensor": 2}, dict(param_dtype="float32", dtype="bfloat16"), True),
    ({"data": 1, "fsdp": 8, "tensor": 1}, dict(param_dtype="bfloat16", lora=LoraConfig(rank=4)), True),
    ({"data": 2, "fsdp": 2, "tensor": 2}, dict(param_dtype="float32", lora=LoraConfig(rank=8)), False),
]


@pytest.mark.parametrize("mesh_shape, runtime, freeze_vision", CASES)
def test_exact_parts_equal_the_bytes_of_instantiated_arrays(mesh_shape, runtime, freeze_vision):
    config = tiny(**runtime)
    workload = planning.Workload(prompts=4, samples=2, prompt_length=24, image_tokens=8, new_tokens=16,
                                 freeze_vision=freeze_vision)
    tx = optax.adamw(1e-3)
    result = planning.plan(config, mesh_shape, workload, optimizer=tx)

    mesh = make_mesh(mesh_shape)
    # the model's parameter arrays (zeros: only their shapes, dtypes and placement matter here)
    abstract = nnx.state(nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(0))),
                         nnx.Param)
    state = jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s), abstract,
                         state_shardings(abstract, mesh))
    trainable, frozen = state.split(trainable_filter(lora=config.lora is not None, freeze_vision=freeze_vision), ...)
    assert result.trainable == per_device(trainable)
    assert result.parameters == per_device(trainable) + per_device(frozen)
    assert result.trainable_params == sum(x.size for x in jax.tree.leaves(trainable))
    report = size_report(config, mesh_shape)  # the same parameters as size.py counts them
    assert (result.total_params, result.parameters) == (report.total_params, report.bytes_per_device)

    # optimizer state, moments placed like their parameters (as rl.step pins them), counts replicated
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = optax.tree_map_params(tx, lambda _, p: p.sharding, jax.eval_shape(tx.init, trainable), trainable,
                                      transform_non_params=lambda _: replicated)
    opt_state = jax.jit(tx.init, out_shardings=shardings)(trainable)
    assert result.optimizer == per_device(opt_state)
    moments = 2 * result.trainable  # AdamW: mu and nu in the parameter dtype, plus the step count
    assert moments < result.optimizer <= moments + 4 * 8

    with jax.set_mesh(mesh):
        cache = jax.jit(lambda: init_cache(config, workload.rows, workload.length))()
    assert result.kv_cache == per_device(cache)
    assert result.kv_cache < sum(x.nbytes for x in jax.tree.leaves(cache)) / 2  # the batch rows were split


def test_gradients_and_reference():
    full = planning.plan(tiny(param_dtype="bfloat16"), {"fsdp": 8}, planning.Workload(prompts=8, samples=2))
    # float32 accumulator + one bfloat16 micro-batch gradient; the reference copies the trainable weights
    assert full.gradients == 3 * full.trainable and full.reference == full.trainable
    lora = planning.plan(tiny(param_dtype="bfloat16", lora=LoraConfig(rank=4)), {"fsdp": 8},
                         planning.Workload(prompts=8, samples=2))
    assert lora.reference == lora.trainable  # zero adapters; the base is shared
    vision = planning.plan(tiny(param_dtype="bfloat16", lora=LoraConfig(rank=4)), {"fsdp": 8},
                           planning.Workload(prompts=8, samples=2, freeze_vision=False))
    assert vision.reference == vision.trainable > lora.trainable  # adapters and the vision tower
    assert lora.parameters - lora.trainable == full.parameters  # the frozen base is the whole bfloat16 model
    no_kl = planning.plan(tiny(), {"fsdp": 8}, planning.Workload(prompts=8, samples=2, reference=False))
    assert no_kl.reference == 0


# ---------------------------------------------------------------- activations

ACT_TEXT = dataclasses.replace(TEXT, vocab_size=4096, hidden_size=256, intermediate_size=704,
                               mrope_section=(8, 12, 12))


@pytest.mark.parametrize("remat", [False, True])
def test_activation_estimate_tracks_xla(remat):
    """Float32 compute on one device (XLA on CPU computes bfloat16 in float32, so only float32 compares)."""
    config = ModelConfig(text=ACT_TEXT, vision=dataclasses.replace(VISION, out_hidden_size=256), remat=remat,
                         scan_layers=True, image_token_id=498, video_token_id=499, vision_start_token_id=496,
                         vision_end_token_id=497)
    workload = planning.Workload(prompts=4, samples=1, prompt_length=256, image_tokens=0, new_tokens=256,
                                 logprob_chunk_size=128)
    rows, length = workload.rows, workload.length
    estimate = planning.update_activation_bytes(config, rows, workload, {"data": 1, "fsdp": 1, "tensor": 1}, remat)

    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(
        config, rngs=nnx.Rngs(0))), nnx.Param, ...)

    def loss(params, ids):
        model = nnx.merge(graphdef, params, rest)
        positions = jnp.broadcast_to(jnp.arange(length)[None, None], (3, rows, length))
        hidden = model(ids, positions, jnp.ones((rows, length), jnp.int32), compute_logits=False).hidden_states
        return token_logprobs(model, hidden[:, :-1], ids[:, 1:], chunk_size=workload.logprob_chunk_size).mean()

    compiled = jax.jit(jax.grad(loss)).lower(params, jax.ShapeDtypeStruct((rows, length), jnp.int32)).compile()
    measured = compiled.memory_analysis().temp_size_in_bytes
    print(f"activations remat={remat}: estimate {estimate / 2**20:.1f} MiB, XLA {measured / 2**20:.1f} MiB")
    assert 0.75 < estimate / measured < 1.25, (estimate, measured)


def test_remat_and_tensor_parallelism_shrink_the_estimate():
    config = tiny(dtype="bfloat16").replace(text=dataclasses.replace(TEXT, num_hidden_layers=8))
    workload = planning.Workload(prompts=8, samples=2, prompt_length=64, image_tokens=8, new_tokens=64)
    one = planning.update_activation_bytes(config, 4, workload, {"tensor": 1}, remat=False)
    assert planning.update_activation_bytes(config, 4, workload, {"tensor": 1}, remat=True) < one / 2
    assert planning.update_activation_bytes(config, 4, workload, {"tensor": 2}, remat=False) < one
    assert planning.update_activation_bytes(config, 8, workload, {"tensor": 1}, remat=False) == 2 * one
    trained = dataclasses.replace(workload, freeze_vision=False)
    assert planning.update_activation_bytes(config, 4, trained, {"tensor": 1}, remat=False) > one


# ---------------------------------------------------------------- fitting

def test_fits_and_the_largest_micro_batch():
    config = tiny()
    workload = planning.Workload(prompts=16, samples=4, prompt_length=64, image_tokens=8, new_tokens=192)
    shape = {"data": 1, "fsdp": 8, "tensor": 1}
    whole = planning.plan(config, shape, workload)
    capacity = int((whole.update_peak - whole.update_activations / 3) / 0.9)  # room for a third of the activations
    assert planning.plan(config, shape, workload, capacity=capacity).fits is False
    micro = planning.largest_fitting_micro_batch(config, shape, workload, capacity=capacity)
    assert micro is not None and micro < workload.rows and workload.rows % micro == 0 and micro % 8 == 0
    fitting = planning.plan(config, shape, dataclasses.replace(workload, micro_batch_size=micro), capacity=capacity)
    assert fitting.fits and fitting.micro_rows_per_device == micro // 8
    bigger = [m for m in range(micro + 8, workload.rows + 1, 8) if workload.rows % m == 0][0]
    assert not planning.plan(config, shape, dataclasses.replace(workload, micro_batch_size=bigger),
                             capacity=capacity).fits
    assert planning.largest_fitting_micro_batch(config, shape, workload, capacity=1) is None


def test_batch_that_does_not_split_over_the_mesh():
    with pytest.raises(ValueError, match="prompts x samples = 12 rows do not split over the 8 batch shards"):
        planning.plan(tiny(), {"fsdp": 8}, planning.Workload(prompts=3, samples=4))
    with pytest.raises(ValueError, match="micro_batch_size 5 does not divide 12 rows"):
        planning.Workload(prompts=3, samples=4, micro_batch_size=5)


# ---------------------------------------------------------------- the command

def _write_config(tmp_path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny().to_hf_dict()))
    return str(path)


def test_plan_command_json_matches_the_library(tmp_path, capsys):
    config_path = _write_config(tmp_path)
    args = [config_path, "--mesh", "data=2,fsdp=-1,tensor=2", "--devices", "8", "--memory", "2GiB", "--prompts", "8",
            "--samples", "2", "--prompt-length", "32", "--image-tokens", "8", "--new-tokens", "32", "--json"]
    assert main(["plan", *args]) == 0
    [row] = json.loads(capsys.readouterr().out)
    expected = planning.plan(tiny(param_dtype="float32", dtype="bfloat16", remat=True),
                             {"data": 2, "fsdp": 2, "tensor": 2},
                             planning.Workload(prompts=8, samples=2, prompt_length=32, image_tokens=8, new_tokens=32),
                             capacity=2 * 2**30)
    assert row["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and row["mode"] == "full"
    for key in ("parameters", "optimizer", "kv_cache", "update_activations", "peak", "fits"):
        assert row[key] == expected.as_dict()[key], key


def test_plan_command_table_for_presets_and_modes(tmp_path, capsys):
    config_path = _write_config(tmp_path)
    args = ["plan", config_path, "--hardware", "8xh100-80gb,v5e-64", "--mode", "full,lora", "--prompts", "64",
            "--markdown"]
    # the tiny vision tower's 32 channels do not split over fsdp=64: an error naming them, unless replicated
    assert main(args) == 2
    assert "vision_embed" in capsys.readouterr().err
    assert main([*args, "--rules", "vision_embed="]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| ") and ("full" in line or "lora" in line)]
    assert len(rows) == 4 and all(line.count("|") == out[0].count("|") for line in rows)
    assert any("8xh100-80gb" in r and "fsdp=8" in r for r in rows)
    assert any("v5e-64" in r and "fsdp=64" in r for r in rows)
    assert all(r.rstrip(" |").endswith("vision_embed") for r in rows)


def test_plan_command_breakdown_and_check(tmp_path, capsys):
    config_path = _write_config(tmp_path)
    assert main(["plan", config_path, "--mesh", "fsdp=8", "--memory", "1KiB", "--prompts", "8"]) == 0
    text = capsys.readouterr().out
    for label in ("parameters", "optimizer", "KV cache", "activations", "does NOT fit"):
        assert label in text
    assert main(["plan", config_path, "--mesh", "fsdp=8", "--memory", "1KiB", "--prompts", "8", "--check"]) == 1


@pytest.mark.parametrize("args, message", [
    (["--hardware", "v9-1"], "unknown hardware 'v9-1'"),
    (["--mesh", "fsdp=-1"], "--devices"),
    (["--mesh", "fsdp=3", "--prompts", "8"], "do not split over the 3 batch shards"),
    (["--mode", "qlora"], "--mode 'qlora'"),
])
def test_plan_command_errors(tmp_path, capsys, args, message):
    assert main(["plan", _write_config(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_plan_command_rejects_a_memory_without_unit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", _write_config(tmp_path), "--memory", "80"])
    assert exit_info.value.code == 2 and "--memory '80'" in capsys.readouterr().err
    assert plan_cmd.parse_bytes("80GiB") == 80 * 2**30 and plan_cmd.parse_bytes("141 GB") == 141 * 10**9


def test_qwen2_5_vl_7b_headline():
    """The recipe's numbers for full fine-tuning on v5p-32 that docs/scaling.md quotes, from first principles."""
    from jaxbiqa.models.qwen2_5_vl.size import qwen2_5_vl_7b

    result = planning.plan(qwen2_5_vl_7b(param_dtype="float32", dtype="bfloat16", remat=True),
                           {"data": 1, "fsdp": 16, "tensor": 1}, capacity=95 * 2**30)
    assert result.total_params == 8_292_166_656
    assert 4 * result.total_params / 16 <= result.parameters < 4 * result.total_params / 16 * 1.01
    # KV cache: 28 layers x (k, v) x 4 kv heads x 128 x 2 bytes per token, 256 rows of 1536 tokens over 16 devices
    kv_values = 28 * 2 * 4 * 128 * 2 * 256 * 1536 // 16
    assert kv_values < result.kv_cache < kv_values * 1.01  # plus the padding mask
    assert result.fits


README_PLAN = ("jaxbiqa plan qwen2.5-vl-7b --config humaniqa,qinsight_score,visualquality_r1 "
               "--hardware v5p-32,8xh100-80gb,8xh200-141gb --markdown")


def test_readme_memory_table_is_the_plan_of_the_recipes(capsys):
    """The README's table is what `jaxbiqa plan --config` prints for the shipped recipes, as they are."""
    from pathlib import Path

    from jaxbiqa.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert README_PLAN in readme
    assert main(README_PLAN.split()[1:]) == 0
    table = capsys.readouterr().out.strip()
    assert table in readme
    rows = [line for line in table.splitlines() if line.startswith("| ") and "(" in line]
    assert len(rows) == 9
    humaniqa = load_config("humaniqa")
    assert humaniqa.model.param_dtype == "float32"  # the parameters column counts float32 master weights
    assert main(["plan", "qwen2.5-vl-7b", "--config", "humaniqa", "--hardware", "8xh100-80gb", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["param_dtype"] == "float32" and row["dtype"] == "bfloat16"
    assert row["workload"]["prompts"] == humaniqa.data.global_batch_size == 64
    assert row["workload"]["samples"] == humaniqa.rollout.pass1.num_samples == 4
    assert row["workload"]["new_tokens"] == humaniqa.rollout.pass1.max_new_tokens
    assert row["parameters"] >= 4 * row["total_params"] // 8  # float32 master weights, fsdp over 8
