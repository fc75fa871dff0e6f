"""The training loop on a tiny model and a tiny synthetic set, run once for the module: the warm
start then GRPO, with a NaN reward injected at one step. Checks what the run logs and writes:
no recompilation after the second step, the NaN step skipped and counted, every metric family in
the JSON lines, sample completions, the evaluation's predictions in the jaxbiqa schema, the
exported policy and the checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainer_helpers import make_assets, tiny_config

from jaxbiqa.config import EvalSection, TrainSection
from jaxbiqa.eval.metrics import iqa_metrics
from jaxbiqa.eval.predictions import load_predictions
from jaxbiqa.rl.trainer import Trainer

SFT_STEPS, GRPO_STEPS, NAN_STEP = 2, 5, 3  # NAN_STEP: the GRPO step whose rewards get a NaN


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model_dir, data_dir = make_assets(root)
    config = tiny_config(model_dir, data_dir, root / "out", eval=EvalSection(decoding="greedy", batch_size=2))
    trainer = Trainer(config, train=TrainSection(max_steps=GRPO_STEPS, progress=False, samples_every=2,
                                                 samples_per_log=1))
    original, calls = trainer.reward_fn, []

    def poisoned(texts, batch):
        total, components = original(texts, batch)
        calls.append(len(texts))
        if len(calls) == NAN_STEP:
            total = total.copy()
            total[0] = np.nan
        return total, components

    trainer.reward_fn = poisoned
    result = trainer.run()
    lines = [json.loads(line) for line in (root / "out" / "train_log.jsonl").read_text().splitlines()]
    return trainer, result, lines, root / "out"


def _stage(lines, stage):
    return [r for r in lines if r["stage"] == stage]


@pytest.mark.slow  # the shared whole training run (warm start, GRPO, evaluation, export)
def test_runs_both_stages_and_exports(run):
    trainer, result, lines, out = run
    assert not result.preempted and result.step == SFT_STEPS + GRPO_STEPS
    assert [r["step"] for r in _stage(lines, "sft")] == list(range(1, SFT_STEPS + 1))
    assert [r["step"] for r in _stage(lines, "grpo")] == list(range(SFT_STEPS + 1, SFT_STEPS + GRPO_STEPS + 1))
    assert (out / "policy" / "model.safetensors").is_file() and (out / "policy" / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["name"] == "tiny"
    ckpts = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == SFT_STEPS + GRPO_STEPS and len(ckpts) <= 3  # the final step, the newest 3 kept
    assert json.loads((out / "summary.json").read_text())["step"] == result.step


@pytest.mark.slow  # the shared whole training run (warm start, GRPO, evaluation, export)
def test_no_recompilation_after_step_two(run):
    _, _, lines, _ = run
    sft, grpo = _stage(lines, "sft"), _stage(lines, "grpo")
    assert {r["compile_count/update"] for r in sft} == {1}
    assert {r["compile_count/update"] for r in grpo} == {1}
    for name in ("compile_count/rollout", "compile_count/logprobs"):
        counts = [r[name] for r in grpo]
        assert len(set(counts[1:])) == 1, f"{name} changed after step 2: {counts}"
        assert counts[0] >= 1


@pytest.mark.slow  # the shared whole training run (warm start, GRPO, evaluation, export)
def test_nan_step_is_skipped_and_counted(run):
    _, _, lines, _ = run
    grpo = _stage(lines, "grpo")
    skipped = [r["skipped_update"] for r in grpo]
    assert skipped == [1.0 if i == NAN_STEP - 1 else 0.0 for i in range(GRPO_STEPS)]
    assert [r["skipped_updates"] for r in grpo] == [0.0] * (NAN_STEP - 1) + [1.0] * (GRPO_STEPS - NAN_STEP + 1)
    assert grpo[NAN_STEP - 1]["reward/total_mean"] is None  # NaN is logged as null


@pytest.mark.slow  # the shared whole training run (warm start, GRPO, evaluation, export)
def test_logs_every_metric_family(run):
    _, _, lines, out = run
    record = _stage(lines, "grpo")[0]
    for key in ("reward/total_mean", "reward/score", "reward/self_consistency", "reward/reasoning",
                "advantage_mean", "advantage_std", "kl", "clip_fraction", "entropy", "loss", "grad_norm",
                "learning_rate", "completion_length/pass1_mean", "completion_length/pass2_mean",
                "parse_failures/pass1", "parse_failures/pass2", "has_caption", "rollout_tokens_per_second",
                "train_tokens_per_second", "step_time", "rollout_time", "reward_time", "compile_count/update",
                "compile_count/rollout"):
        assert key in record, key
    assert abs(record["advantage_mean"]) < 1e-5  # centred within each group
    assert {"loss", "tokens_per_second", "step_time", "completions_cut"} <= set(_stage(lines, "sft")[0])
    samples = (out / "samples.log").read_text()
    assert samples.count("===== step") == 3  # GRPO steps 1, 2 and 4
    assert "pass1:" in samples and "pass2:" in samples and "reward/score:" in samples
    assert any((out / "tensorboard").iterdir())


@pytest.mark.slow  # the shared whole training run (warm start, GRPO, evaluation, export)
def test_evaluation_writes_readable_predictions(run):
    _, result, lines, out = run
    final = result.eval["final"]
    datasets = load_predictions(out / "eval" / "final" / "predictions.jsonl")
    column = datasets["synthetic"].columns["overall_score"]
    assert len(column.images) == final["n"] == 6  # the one held-out photo: clean + 5 levels
    metrics = iqa_metrics(column.pred, column.gt)
    assert metrics.n_invalid == final["image"]["n_invalid"]
    if final["image"]["srcc"] is not None:
        assert metrics.srcc == pytest.approx(final["image"]["srcc"])
    assert "caption_score" in datasets["synthetic"].columns
    assert [r for r in lines if r["stage"] == "eval"][-1]["step"] == result.step


def test_global_batch_sizes_must_divide_over_the_processes(tmp_path):
    import dataclasses

    config = tiny_config(tmp_path / "model", tmp_path / "data", tmp_path / "out")
    four = dataclasses.replace(config.data, shard_index=0, shard_count=4)
    with pytest.raises(ValueError, match=r"data.global_batch_size=2 does not divide over 4 processes"):
        Trainer(dataclasses.replace(config, data=four))
    with pytest.raises(ValueError, match=r"train.sft_batch_size=6 does not divide over 4 processes"):
        Trainer(dataclasses.replace(config, data=dataclasses.replace(four, global_batch_size=4)),
                train=TrainSection(sft_batch_size=6))


@pytest.mark.slow  # two trainings
def test_two_image_sizes_train_with_one_compile_per_size(tmp_path_factory):
    """Square and 3:2 images (56x56 and 84x56 at 4,704 pixels): batches of one size each, vision plans
    cached per (grid, images), and each program compiles once per size, never again."""
    import dataclasses

    from PIL import Image

    root = tmp_path_factory.mktemp("sizes")
    model_dir, data_dir = make_assets(root)
    rng = np.random.default_rng(0)
    with open(root / "index.jsonl", "w") as index:
        for i in range(12):
            size = (56, 56) if i % 2 else (84, 56)
            Image.fromarray(rng.integers(0, 256, (56, size[0], 3), dtype=np.uint8)).save(root / f"{i}.png")
            index.write(json.dumps({"image": f"{i}.png", "dataset": "toy", "mos_norm": 1 + i / 3,
                                    "description": "a toy picture", "good_aspect": "sharp", "bad_aspect": "none"})
                        + "\n")
    config = tiny_config(model_dir, data_dir, root / "out")
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, train=(f"jsonl:{root / 'index.jsonl'}",), train_split="", max_pixels=4704),
        sft=dataclasses.replace(config.sft, steps=4))
    trainer = Trainer(config, train=TrainSection(progress=False, eval_at_end=False, eval_after_sft=False,
                                                 samples_every=0, tensorboard=False))
    assert trainer.grpo_steps == 6  # 3 batches of 2 of each size
    assert trainer.run().step == 4 + 6
    lines = [json.loads(line) for line in (root / "out" / "train_log.jsonl").read_text().splitlines()]
    sft, grpo = _stage(lines, "sft"), _stage(lines, "grpo")
    assert sft[-1]["compile_count/update"] == grpo[-1]["compile_count/update"] == 2  # both sizes in each stage
    for name in ("compile_count/update", "compile_count/rollout", "compile_count/logprobs"):
        counts = [r[name] for r in grpo]
        assert len(set(counts)) <= 2 and counts == sorted(counts), f"{name}: {counts}"  # one rise: the second size
    assert sorted(trainer.plans._plans) == [((1, 4, 4), 2), ((1, 4, 6), 2)]


def test_update_batch_scores_what_the_sampler_sampled(tmp_path_factory):
    """The GRPO update batch (prompts repeated per sample, M-RoPE positions, image features per
    row, completion mask) gives the sampled tokens the log-probs the sampler drew them with; a
    completion with a generated image placeholder is cut there, so no row takes another's features."""
    import jax
    import jax.numpy as jnp

    from jaxbiqa.models.build import build_policy
    from jaxbiqa.rl import batches
    from jaxbiqa.rollout import Rollout

    root = tmp_path_factory.mktemp("wiring")
    model_dir, data_dir = make_assets(root)
    config = tiny_config(model_dir, data_dir, root / "out")
    trainer = Trainer(config, train=TrainSection(progress=False))
    model = build_policy(config.model, seed=0)
    rollout = Rollout.from_processor(config.rollout, trainer.processor, model.config.text.vocab_size)
    step_fn = trainer._grpo_update(model)
    state = step_fn.init(model)
    placeholders = (model.config.image_token_id, model.config.video_token_id)
    iterator, cuts, scored = trainer._pipeline(2, None), 0, 0
    for seed in range(4):
        data = next(iterator)
        prompts = batches.prompt_batch(lambda *a: rollout.prepare(model, *a), data)
        result = rollout(step_fn.model(state), prompts, jax.random.key(seed))
        device = result.device  # the rows are built from the rollout's device arrays
        batch, cut = batches.grpo_pass1(prompts, device.pass1.tokens, device.pass1.lengths, group=2,
                                        eos_ids=trainer.eos_ids, placeholder_ids=placeholders, pad_id=0)
        # the update's image features are those the rollout's prefill computed (GRPOStep reuses them)
        features = device.image_features.reshape(len(data["mos_norm"]), -1, device.image_features.shape[-1])
        batch["image_features"] = jnp.repeat(features, 2, axis=0)
        mask = np.asarray(batch["completion_mask"]) > 0
        logps = np.asarray(step_fn.logprobs(state.params, state.frozen, batch))
        np.testing.assert_allclose(logps[mask], result.pass1.logprobs[mask], atol=1e-5)
        second = batches.grpo_pass2(device.pass2_input_ids, device.pass2_attention_mask, device.pass2.tokens,
                                    device.pass2.lengths, device.has_caption, eos_ids=trainer.eos_ids)
        mask2 = np.asarray(second["completion_mask"]) > 0
        logps2 = np.asarray(step_fn.logprobs(state.params, state.frozen, second))
        np.testing.assert_allclose(logps2[mask2], result.pass2.logprobs[mask2], atol=1e-5)
        assert not mask2[~result.has_caption].any()  # skipped pass 2 is not trained
        cuts, scored = cuts + int(cut), scored + int(mask.sum())
    assert scored > 100
    assert cuts > 0  # the random policy does sample placeholders: the cut is exercised


def test_cut_at_placeholders():
    from jaxbiqa.rl.batches import cut_at_placeholders

    tokens = np.array([[5, 12, 6, 7], [5, 6, 7, 8], [13, 4, 12, 9]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    out, keep, cut = cut_at_placeholders(tokens, valid, (12, 13), pad_id=0)
    assert cut == 2
    np.testing.assert_array_equal(keep, [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out, [[5, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0]])


def test_resume_step_sets_later_checkpoints_aside(tmp_path):
    import jax.numpy as jnp

    from jaxbiqa.checkpoint import Checkpointer

    model_dir, data_dir = make_assets(tmp_path)
    trainer = Trainer(tiny_config(model_dir, data_dir, tmp_path / "out"))
    folder = tmp_path / "out" / "checkpoints"
    with Checkpointer(folder, async_save=False) as checkpointer:
        for step in (2, 4, 6):
            checkpointer.save(step, {"x": jnp.zeros(2)}, force=True)
        with pytest.raises(FileExistsError, match="--resume"):
            trainer._resume_step(checkpointer, resume=False, resume_step=None)
        with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 .* \[2, 4, 6\]"):
            trainer._resume_step(checkpointer, resume=True, resume_step=5)
        assert trainer._resume_step(checkpointer, resume=True, resume_step=None) == 6
        assert trainer._resume_step(checkpointer, resume=True, resume_step=4) == 4
        # the later step would block the resumed run's own save of it: kept aside, not deleted
        assert checkpointer.all_steps() == [2, 4] and (folder / "6.superseded").is_dir()
