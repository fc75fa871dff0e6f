"""Mixed precision as the paper recipes run it: float32 master weights under bfloat16 compute take a
1e-6 AdamW update as an all-float32 run does; bfloat16 master weights would lose it and are refused."""

import numpy as np
import pytest
from flax import nnx
from tiny_models import grpo_batch, random_model, tiny_config

from jaxbiqa.config import ConfigError, load_config
from jaxbiqa.models.qwen2_5_vl import trainable_filter
from jaxbiqa.rl.step import UpdateStep, grpo_loss

RECIPE = load_config("humaniqa")


def _update(param_dtype: str, dtype: str) -> dict:
    """The parameter change of one GRPO step with the recipe's GRPO and optimizer sections (lr 1e-6)."""
    model_section = RECIPE.model
    config = tiny_config().replace(param_dtype=param_dtype, dtype=dtype, remat=model_section.remat,
                                   scan_layers=model_section.scan_layers)
    model = random_model(config)
    step = UpdateStep(model, grpo_loss(RECIPE.grpo), RECIPE.optim, total_steps=10,
                     trainable=trainable_filter(lora=False, freeze_vision=RECIPE.optim.freeze_vision))
    state = step.init(model)
    before = {path: np.asarray(v.get_value(), np.float64) for path, v in nnx.to_flat_state(state.params)}
    batch = grpo_batch(rows=8, seed=0)
    logp = np.asarray(step.logprobs(state.params, state.frozen, batch))
    batch["ref_logps"] = (logp + np.random.default_rng(1).normal(0, 0.3, logp.shape)).astype(np.float32)
    state, metrics = step(state, batch)
    assert int(metrics["skipped_update"]) == 0
    after = {path: v.get_value() for path, v in nnx.to_flat_state(state.params)}
    assert {str(v.dtype) for v in after.values()} == {param_dtype}
    return {path: np.asarray(after[path], np.float64) - before[path] for path in before}


def test_recipe_is_float32_master_weights_under_bf16_compute() -> None:
    assert (RECIPE.model.param_dtype, RECIPE.model.dtype, RECIPE.optim.learning_rate) == ("float32", "bfloat16", 1e-6)


def test_bf16_compute_update_equals_float32_update() -> None:
    mixed, reference = _update("float32", "bfloat16"), _update("float32", "float32")
    for path in reference:  # the amount each tensor moves
        if path[-2:] == ("k_proj", "bias"):
            # its gradient is zero in exact arithmetic (a key bias adds the same q.b to all of a
            # query's logits, which the softmax ignores): Adam's first step turns rounding noise into
            # +-lr or, where the noise is exactly 0, into 0, so its norm measures noise
            continue
        ref_norm = np.linalg.norm(reference[path])
        if ref_norm:
            assert abs(np.linalg.norm(mixed[path]) / ref_norm - 1) <= 1e-2, path
    m, r = (np.concatenate([d[p].ravel() for p in reference]) for d in (mixed, reference))
    # AdamW's first step is lr * sign(g): the direction agrees but for the few near-zero gradients
    # whose sign bfloat16 rounding flips
    assert m @ r / (np.linalg.norm(m) * np.linalg.norm(r)) >= 0.98
    assert np.mean(np.sign(m) != np.sign(r)) <= 1e-2
    assert np.mean(m != 0) >= 0.9 and np.mean(r != 0) >= 0.9  # most parameters changed
    assert np.abs(m).mean() == pytest.approx(np.abs(r).mean(), rel=1e-2)
    assert np.abs(m).mean() == pytest.approx(RECIPE.optim.learning_rate, rel=0.1)


def test_bf16_master_weights_lose_the_update_and_are_refused() -> None:
    lost = np.concatenate([d.ravel() for d in _update("bfloat16", "bfloat16").values()])
    assert np.mean(lost != 0) < 0.01  # why the config refuses them
    with pytest.raises(ConfigError, match="allow_bf16_master_weights"):
        load_config("humaniqa", ["model.param_dtype=bfloat16"])
    with pytest.raises(ConfigError, match="vision tower"):
        load_config("humaniqa", ["model.lora_rank=8", "model.param_dtype=bfloat16", "optim.freeze_vision=false"])
    with pytest.raises(ConfigError, match="LoRA adapters"):
        load_config("humaniqa", ["model.lora_rank=8", "model.lora_dtype=bfloat16"])
    # a bf16 frozen base under float32 adapters is fine; so is an explicit opt-in
    for order in (["model.lora_rank=8", "model.param_dtype=bfloat16"], ["model.param_dtype=bfloat16", "model.lora_rank=8"]):
        assert load_config("humaniqa", order).model.lora_dtype == "float32"
    allowed = load_config("humaniqa", ["model.allow_bf16_master_weights=true", "model.param_dtype=bfloat16"])
    assert allowed.model.param_dtype == "bfloat16"


def test_lora_adapters_are_float32_over_a_bf16_base() -> None:
    from jaxbiqa.models.qwen2_5_vl import LoraConfig

    model = random_model(tiny_config(lora=LoraConfig(rank=4)).replace(param_dtype="bfloat16", dtype="bfloat16"))
    dtypes = {type(v).__name__: set() for _, v in nnx.to_flat_state(nnx.state(model))}
    for _, v in nnx.to_flat_state(nnx.state(model)):
        dtypes[type(v).__name__].add(str(v.get_value().dtype))
    assert dtypes == {"Param": {"bfloat16"}, "LoRAParam": {"float32"}}
