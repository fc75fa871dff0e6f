"""GRPO checkpoints without the reference policy: a run stopped mid-GRPO and resumed ends like an
uninterrupted one (parameters and every step's KL to the reference) for each place the resumed
run rebuilds the reference from: zeroed LoRA adapters, `model.path`'s weights (no warm start), or
`<checkpoints>/reference`, saved once as GRPO starts (after a warm start). And a step's checkpoint
with beta > 0 is no larger than with beta = 0 (the reference is not in it). A stop requested in
the middle of a rollout abandons that step, saves the one before and resumes as exactly."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from trainer_helpers import make_assets, tiny_config

from jaxbiqa import interrupts
from jaxbiqa.checkpoint import PreemptionGuard
from jaxbiqa.config import GRPOSection, ModelSection, SFTSection, TrainSection
from jaxbiqa.rl import grpo_step as grpo_step_module
from jaxbiqa.rl import trainer as trainer_module
from jaxbiqa.rl.trainer import REFERENCE_ITEM, Trainer

pytestmark = pytest.mark.slow  # trainings with warm start, checkpoints and resume

GRPO_STEPS = 3
TRAIN = TrainSection(max_steps=GRPO_STEPS, progress=False, tensorboard=False, samples_every=0, eval_at_end=False,
                     eval_after_sft=False)


class _StopAfter(PreemptionGuard):
    """A guard that asks to stop after `steps` steps, as SIGTERM would (one `should_stop` per step)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.calls = steps, 0

    def should_stop(self) -> bool:
        self.calls += 1
        return self.calls >= self.steps


class _StopInRollout(grpo_step_module.PolicyCopy):
    """A rollout copy that requests a stop (as SIGTERM does) as the rollout of GRPO step `steps`
    begins: its decode loop sees it at the first poll."""

    steps = 0

    def __call__(self, model):
        type(self).calls = getattr(type(self), "calls", 0) + 1
        if type(self).calls == self.steps:
            interrupts.request_stop()
        return super().__call__(model)


def _run(config, monkeypatch, stop_after: int | None = None, resume: bool = False, mid_rollout: bool = False):
    with monkeypatch.context() as patch:
        if stop_after and mid_rollout:  # stopped inside the rollout of the step after `stop_after`
            stop = type("Stop", (_StopInRollout,), {"steps": stop_after + 1 - config.sft.steps, "calls": 0})
            patch.setattr(grpo_step_module, "PolicyCopy", stop)
        elif stop_after:
            patch.setattr(trainer_module, "PreemptionGuard", lambda **_: _StopAfter(stop_after))
        return Trainer(config, train=TRAIN).run(resume=resume)


def _grpo_log(output: Path) -> dict[int, dict]:
    """The last logged record of each GRPO step."""
    lines = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if r["stage"] == "grpo"}


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model_dir, data_dir = make_assets(root)
    return root, model_dir, data_dir


def _stopped_and_resumed(config, monkeypatch, stop_after: int, mid_rollout: bool = False) -> tuple[Path, Path]:
    """An uninterrupted run of `config` and one stopped after `stop_after` steps (at the step's end,
    or `mid_rollout` of the next step), then resumed."""
    straight = dataclasses.replace(config, output_dir=str(Path(config.output_dir) / "straight"))
    resumed = dataclasses.replace(config, output_dir=str(Path(config.output_dir) / "resumed"))
    total = config.sft.steps + GRPO_STEPS
    assert _run(straight, monkeypatch).step == total
    stopped = _run(resumed, monkeypatch, stop_after=stop_after, mid_rollout=mid_rollout)
    assert stopped.preempted and stopped.step == stop_after
    assert not (Path(resumed.output_dir) / "policy").exists()
    assert _run(resumed, monkeypatch, resume=True).step == total

    expected, got = (load_file(str(Path(c.output_dir) / "policy" / "model.safetensors")) for c in (straight, resumed))
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # the resumed steps measured the KL to the same reference (a wrong one, e.g. the policy at the
    # resume, gives another KL: 0 at the first resumed step)
    expected_log, got_log = _grpo_log(Path(straight.output_dir)), _grpo_log(Path(resumed.output_dir))
    assert sorted(got_log) == sorted(expected_log) == list(range(config.sft.steps + 1, total + 1))
    for step in range(stop_after + 1, total + 1):
        assert expected_log[step]["kl"] > 0
        for name in ("kl", "loss", "reward/total_mean"):
            np.testing.assert_allclose(got_log[step][name], expected_log[step][name], rtol=1e-5, atol=1e-9,
                                       err_msg=f"step {step} {name}")
    return Path(straight.output_dir), Path(resumed.output_dir)


def test_reference_after_a_warm_start_is_saved_once_not_per_checkpoint(assets, monkeypatch):
    """Full fine-tuning after the warm start: the reference is `<checkpoints>/reference`, written
    once; each GRPO step's checkpoint is the size of a beta = 0 run's."""
    root, model_dir, data_dir = assets
    config = tiny_config(model_dir, data_dir, root / "warm")  # 2 warm-start steps, beta 1e-3
    straight, resumed = _stopped_and_resumed(config, monkeypatch, stop_after=config.sft.steps + 1)
    for output in (straight, resumed):
        assert (output / "checkpoints" / REFERENCE_ITEM).is_dir()

    no_kl = tiny_config(model_dir, data_dir, root / "warm" / "beta0", grpo=GRPOSection(beta=0.0))
    assert _run(no_kl, monkeypatch).step == config.sft.steps + GRPO_STEPS
    assert not (Path(no_kl.output_dir) / "checkpoints" / REFERENCE_ITEM).exists()
    last = str(config.sft.steps + GRPO_STEPS)
    with_kl, without = _bytes(straight / "checkpoints" / last), _bytes(Path(no_kl.output_dir) / "checkpoints" / last)
    reference = _bytes(straight / "checkpoints" / REFERENCE_ITEM)
    print(f"step {last} checkpoint: {with_kl} bytes with beta > 0, {without} with beta = 0; "
          f"the reference (once): {reference} bytes")
    assert reference > 0.2 * without  # the text model's parameters, float32: a large share of a step
    assert abs(with_kl - without) < 0.05 * reference  # same size, up to the metadata and compression


def test_lora_reference_is_zeroed_adapters(assets, monkeypatch):
    """LoRA with the vision tower frozen: the reference is the zeroed adapters, nothing stored."""
    root, model_dir, data_dir = assets
    model = ModelSection(path=str(model_dir), init="random", param_dtype="float32", dtype="float32", remat=False, scan_layers=False,
                         lora_rank=4, lora_alpha=8.0, lora_dropout=0.1)
    config = tiny_config(model_dir, data_dir, root / "lora", model=model, sft=SFTSection(steps=0))
    straight, resumed = _stopped_and_resumed(config, monkeypatch, stop_after=2)
    for output in (straight, resumed):
        assert not (output / "checkpoints" / REFERENCE_ITEM).exists()


def test_reference_without_warm_start_reloads_model_path(assets, monkeypatch):
    """Full fine-tuning from `model.path`'s weights with no warm start (the paper's stage-A policy):
    the resumed run reloads the reference from there, nothing stored."""
    from jaxbiqa.models.build import build_policy
    from jaxbiqa.models.qwen2_5_vl import save_pretrained

    root, model_dir, data_dir = assets
    weights_dir = root / "with_weights"
    shutil.copytree(model_dir, weights_dir)
    config = tiny_config(weights_dir, data_dir, root / "weights", sft=SFTSection(steps=0))
    save_pretrained(build_policy(dataclasses.replace(config.model, path=str(model_dir)), seed=7), weights_dir)
    assert (weights_dir / "model.safetensors").is_file()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, init="pretrained"))
    straight, resumed = _stopped_and_resumed(config, monkeypatch, stop_after=2)
    for output in (straight, resumed):
        assert not (output / "checkpoints" / REFERENCE_ITEM).exists()


def test_a_stop_mid_rollout_saves_the_step_before_and_resumes_exactly(assets, monkeypatch):
    root, model_dir, data_dir = assets
    config = tiny_config(model_dir, data_dir, root / "mid_rollout", sft=SFTSection(steps=0))
    _, resumed = _stopped_and_resumed(config, monkeypatch, stop_after=1, mid_rollout=True)
    assert sorted(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit())[-1] == GRPO_STEPS
