"""The jitted update: micro-batching is exact, the update is clip + AdamW of the full-batch gradient,
no recompilation, non-finite steps are skipped and counted, the 8-device mesh gives the same result,
LoRA trains adapters only, reference and old-policy log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import EOS, PAD, grpo_batch, random_model, tiny_config

from jaxbiqa.config import GRPOSection, OptimSection
from jaxbiqa.models.qwen2_5_vl import LoraConfig, get_rope_index, text_positions, trainable_filter, vision_plan
from jaxbiqa.rl.losses import finish
from jaxbiqa.rl.step import UpdateStep, completion_logprobs, grpo_loss, make_schedule, pack_batch
from jaxbiqa.sharding import make_mesh

GRPO = GRPOSection(beta=0.04, clip_epsilon_high=0.28)
OPTIM = OptimSection(learning_rate=1e-3, max_grad_norm=1.0, weight_decay=0.01)
TEXT_ONLY = trainable_filter(lora=False, freeze_vision=True)


def _params(state):
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state.params)}


def _assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=atol, rtol=0, err_msg=str(path))


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config())


@pytest.fixture(scope="module")
def full_step(model):
    """Full fine-tuning with the vision tower frozen (text batches do not reach it)."""
    return UpdateStep(model, grpo_loss(GRPO), OPTIM, total_steps=10, trainable=TEXT_ONLY)


@pytest.fixture(scope="module")
def batch(full_step, model):
    """A GRPO batch with old and reference log-probs near the current ones (so some ratios clip)."""
    data = grpo_batch(rows=8, seed=0)
    state = full_step.init(model, copy=True)
    logp = np.asarray(full_step.logprobs(state.params, state.frozen, data))
    rng = np.random.default_rng(1)
    data["old_logps"] = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
    data["ref_logps"] = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
    return data


def test_update_is_clipped_adamw_of_the_full_batch_gradient(full_step, model, batch):
    state = full_step.init(model, copy=True)
    before = _params(state)
    graphdef, params, frozen = nnx.split(model, TEXT_ONLY, ...)

    def mean_loss(p):
        terms = grpo_loss(GRPO)(nnx.merge(graphdef, p, frozen), batch, None)
        return terms.total / terms.denominator

    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(params)
    grads = {path: np.asarray(v.get_value(), np.float64) for path, v in nnx.to_flat_state(grads)}
    norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    scale = min(1.0, OPTIM.max_grad_norm / norm)
    state, metrics = full_step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    assert 0 < float(metrics["clip_fraction"]) < 1 and float(metrics["kl"]) > 0 and float(metrics["entropy"]) > 0
    lr = OPTIM.learning_rate
    expected = {}
    for path, g in grads.items():  # AdamW's first step: m_hat = g, v_hat = g^2
        g = g * scale
        expected[path] = before[path] - lr * g / (np.abs(g) + OPTIM.eps) - lr * OPTIM.weight_decay * before[path]
    _assert_same(_params(state), expected, atol=1e-6)


def test_micro_batching_gives_the_same_update(full_step, model, batch):
    micro = UpdateStep(model, grpo_loss(GRPO), OptimSection(**{**OPTIM.__dict__, "micro_batch_size": 2}), 10,
                      trainable=TEXT_ONLY)
    a, b = full_step.init(model, copy=True), micro.init(model, copy=True)
    for seed in range(2):
        data = {**batch, "advantages": np.random.default_rng(seed).normal(size=8).astype(np.float32)}
        a, ma = full_step(a, data)
        b, mb = micro(b, data)
        for name in ("loss", "grad_norm", "clip_fraction", "kl", "entropy", "denominator"):
            assert float(ma[name]) == pytest.approx(float(mb[name]), rel=1e-5, abs=1e-7), name
    _assert_same(_params(a), _params(b), atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch_size must divide"):
        UpdateStep(model, grpo_loss(GRPO), OptimSection(micro_batch_size=3), 10,
                  trainable=TEXT_ONLY)(micro.init(model, copy=True), batch)


def test_no_recompilation_and_non_finite_steps_are_skipped(full_step, model, batch):
    state = full_step.init(model, copy=True)
    assert all(p[0] != "visual" for p, _ in nnx.to_flat_state(state.params))
    assert any(p[0] == "visual" for p, _ in nnx.to_flat_state(state.frozen))
    ref_params = full_step.reference_params(state)  # full fine-tuning: a copy the donating steps leave intact
    start = np.asarray(full_step.logprobs(state.params, state.frozen, batch))
    rng = np.random.default_rng(5)
    for _ in range(3):
        state, metrics = full_step(state, {**batch, "advantages": rng.normal(size=8).astype(np.float32)})
    assert full_step.compile_count == 1
    np.testing.assert_array_equal(np.asarray(full_step.logprobs(ref_params, state.frozen, batch)), start)
    assert np.abs(np.asarray(full_step.logprobs(state.params, state.frozen, batch)) - start).max() > 1e-4
    before, opt_before = _params(state), jax.tree.map(np.asarray, state.opt_state)
    lr_before = float(metrics["learning_rate"])

    bad = {**batch, "advantages": batch["advantages"].copy()}
    bad["advantages"][3] = np.nan
    state, metrics = full_step(state, bad)
    assert int(metrics["skipped_update"]) == 1 and int(metrics["skipped_updates"]) == 1
    assert int(state.step) == 4 and int(state.skipped) == 1
    _assert_same(_params(state), before, atol=0)
    for x, y in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(opt_before)):
        np.testing.assert_array_equal(np.asarray(x), y)

    state, metrics = full_step(state, batch)  # the schedule did not advance on the skipped step
    assert int(metrics["skipped_update"]) == 0 and int(metrics["skipped_updates"]) == 1
    assert float(metrics["learning_rate"]) == pytest.approx(lr_before - OPTIM.learning_rate / 10, rel=1e-5)
    assert max(np.abs(_params(state)[p] - before[p]).max() for p in before) > 1e-5
    assert full_step.compile_count == 1


def test_mesh_gives_the_single_device_update_without_recompiling(full_step, model, batch):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = UpdateStep(model, grpo_loss(GRPO), OptimSection(**{**OPTIM.__dict__, "micro_batch_size": 4}), 10,
                        trainable=TEXT_ONLY, mesh=mesh)
    a, b = full_step.init(model, copy=True), sharded.init(model, copy=True)
    for seed in range(3):
        data = {**batch, "advantages": np.random.default_rng(seed).normal(size=8).astype(np.float32)}
        a, _ = full_step(a, data)
        b, metrics = sharded(b, data)
    assert sharded.compile_count == 1
    _assert_same(_params(a), _params(b), atol=1e-5)
    q = b.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor") and len(q.sharding.device_set) == 8
    mu = b.opt_state[1][0].mu["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    assert mu.sharding.is_equivalent_to(q.sharding, 2)


def test_lora_trains_adapters_only_and_the_reference_is_the_base_model(full_step, model, batch):
    lora_model = random_model(tiny_config(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0)))  # same base weights
    step = UpdateStep(lora_model, grpo_loss(GRPO), OptimSection(learning_rate=1e-2), 10,
                     trainable=trainable_filter(lora=True, freeze_vision=True))
    state = step.init(lora_model)
    assert {p[-1] for p, _ in nnx.to_flat_state(state.params)} == {"lora_a", "lora_b"}
    frozen_before = jax.tree.map(np.asarray, state.frozen)
    base = full_step.init(model, copy=True)
    base_logps = np.asarray(full_step.logprobs(base.params, base.frozen, batch))

    for _ in range(2):
        state, metrics = step(state, batch)
    assert int(metrics["skipped_updates"]) == 0
    for x, y in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(frozen_before)):
        np.testing.assert_array_equal(np.asarray(x), y)
    ref_params = step.reference_params(state)
    np.testing.assert_allclose(np.asarray(step.logprobs(ref_params, state.frozen, batch)), base_logps, atol=1e-6)
    current = np.asarray(step.logprobs(state.params, state.frozen, batch))
    assert np.abs(current - base_logps).max() > 1e-3  # the adapters moved the policy


def test_stored_old_logps_equal_the_detached_current_ones(full_step, model, batch):
    """num_iterations > 1 stores old log-probs before the first update; on that first update they
    must give exactly the update of `old = stop_gradient(logp)`."""
    no_old = {k: v for k, v in batch.items() if k != "old_logps"}
    a = full_step.init(model, copy=True)
    old = np.asarray(full_step.logprobs(a.params, a.frozen, no_old))
    b = full_step.init(model, copy=True)
    a, ma = full_step(a, no_old)
    b, mb = full_step(b, {**no_old, "old_logps": old})
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
    assert float(mb["clip_fraction"]) == 0.0
    # the two jits round log-probs differently (~1e-7); Adam's first step amplifies that on near-zero gradients
    _assert_same(_params(a), _params(b), atol=1e-5)


def test_completion_logprobs_match_full_logits(model):
    data = grpo_batch(rows=4, seed=3)

    @nnx.jit
    def both(model, data):
        chunked = completion_logprobs(model, data, chunk_size=3, return_entropy=True)
        return chunked, model(data["input_ids"], data["positions"], data["attention_mask"]).logits

    (logp, entropy), logits = both(model, {k: jnp.asarray(v) for k, v in data.items()})
    c = data["completion_mask"].shape[1]
    full = jax.nn.log_softmax(logits[:, -c - 1:-1], axis=-1)
    expected = np.take_along_axis(np.asarray(full), data["input_ids"][:, -c:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(logp), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy), -(np.exp(full) * full).sum(-1), atol=1e-4)


def test_schedules():
    linear = make_schedule(OptimSection(learning_rate=1.0), 10)
    assert [float(linear(i)) for i in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    warm = make_schedule(OptimSection(learning_rate=1.0, warmup_steps=2), 12)
    assert [float(warm(i)) for i in (0, 1, 2, 7, 12)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    cosine = make_schedule(OptimSection(learning_rate=1.0, schedule="cosine", end_learning_rate=0.1), 10)
    assert [float(cosine(i)) for i in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    assert float(make_schedule(OptimSection(learning_rate=0.3, schedule="constant"), 5)(4)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule(OptimSection(), 0)


def test_pack_batch_layout():
    prompt_ids = np.array([[PAD, 7, 8], [4, 5, 6]])
    prompt_mask = np.array([[0, 1, 1], [1, 1, 1]])
    completion = np.array([[9, EOS, 9, 9], [9, 9, 9, 9]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    out = pack_batch(prompt_ids, prompt_mask, completion, eos_ids=EOS, completion_valid=valid)
    np.testing.assert_array_equal(out["completion_mask"], [[1, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(out["attention_mask"], [[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(out["positions"], np.asarray(text_positions(out["attention_mask"])))
    assert out["input_ids"].shape == (2, 7) and out["positions"].shape == (3, 2, 7)
    # prompts with images: their own positions, then index among valid tokens + rope delta
    prompt_positions = np.stack([np.array([[0, 0, 1], [0, 1, 2]]), np.array([[0, 0, 4], [0, 1, 2]]),
                                 np.array([[0, 0, 5], [0, 1, 2]])])
    out = pack_batch(prompt_ids, prompt_mask, completion, eos_ids=EOS, completion_valid=valid,
                     prompt_positions=prompt_positions, rope_deltas=np.array([4, 0]))
    np.testing.assert_array_equal(out["positions"][:, :, :3], prompt_positions)
    scored = np.where(out["completion_mask"] > 0, out["positions"][1, :, 3:], -1)  # masked ones are never used
    np.testing.assert_array_equal(scored, [[6, 7, -1, -1], [3, 4, 5, -1]])
    with pytest.raises(ValueError, match="prompt_positions of shape"):
        pack_batch(prompt_ids, prompt_mask, completion, eos_ids=EOS, prompt_positions=np.zeros((3, 2, 5)),
                   rope_deltas=np.zeros(2))
    with pytest.raises(ValueError, match="go together"):
        pack_batch(prompt_ids, prompt_mask, completion, eos_ids=EOS, rope_deltas=np.zeros(2))


def test_metrics_are_finished_means():
    assert float(finish((jnp.asarray(3.0), jnp.asarray(4.0)))) == 0.75
    assert float(finish((jnp.asarray(0.0), jnp.asarray(0.0)))) == 0.0


def test_image_inputs_follow_their_rows_through_micro_batches(full_step, model):
    """Pass-1 batches: precomputed image features `[B, n, hidden]`, or pixels `[B, p, d]` with the
    vision plan of one micro-batch, give the log-probs of the full model run on the whole batch."""
    config = model.config
    rows, grid = 4, (1, 4, 4)  # 16 patches -> 4 image tokens per image
    rng = np.random.default_rng(0)
    image = [config.vision_start_token_id] + [config.image_token_id] * 4 + [config.vision_end_token_id]
    prompt_ids = np.array([image + rng.integers(3, 80, 3).tolist() for _ in range(rows)])
    completion_ids = rng.integers(3, 80, (rows, 5))
    grids = np.array([grid] * rows)
    prompt_positions, deltas = get_rope_index(prompt_ids, grids, None, config)
    batch = pack_batch(prompt_ids, np.ones_like(prompt_ids), completion_ids, eos_ids=EOS,
                       prompt_positions=prompt_positions, rope_deltas=deltas)
    pixels = rng.standard_normal((rows * 16, config.vision.patch_dim)).astype(np.float32)

    @nnx.jit
    def reference(model, pixels, plan):
        out = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["positions"]),
                    jnp.asarray(batch["attention_mask"]), pixels, plan)
        return jax.nn.log_softmax(out.logits[:, -6:-1], axis=-1), model.get_image_features(pixels, plan)

    full, features = reference(model, pixels, vision_plan(grids, config.vision))
    expected = np.take_along_axis(np.asarray(full), completion_ids[..., None], axis=-1)[..., 0]
    state = full_step.init(model, copy=True)
    with_features = {**batch, "image_features": np.asarray(features).reshape(rows, 4, -1)}
    np.testing.assert_allclose(np.asarray(full_step.logprobs(state.params, state.frozen, with_features,
                                                             micro_batch_size=2)), expected, atol=1e-5)
    with_pixels = {**batch, "pixel_values": pixels.reshape(rows, 16, -1)}
    plan = vision_plan(grids[:2], config.vision)  # the images of one micro-batch
    got = full_step.logprobs(state.params, state.frozen, with_pixels, unsplit={"vision_plan": plan}, micro_batch_size=2)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
