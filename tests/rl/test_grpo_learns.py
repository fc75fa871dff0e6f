"""The whole GRPO loop (sampling, rewards, group advantages, update) optimises: on the tiny model,
a reward for short completions rises within a couple of dozen steps. A sign or row-order mistake
anywhere between the sampler and the update would leave it flat or make it fall."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from trainer_helpers import make_assets, tiny_config

from jaxbiqa.config import OptimSection, SFTSection, TrainSection
from jaxbiqa.rl.trainer import Trainer

pytestmark = pytest.mark.slow  # a GRPO training run

STEPS = 24


def shortness(texts, batch):
    """Minus the completion length in hundreds of characters."""
    values = -np.array([len(t) for t in texts], np.float32) / 100
    return values, {"shortness": values}


def test_grpo_raises_a_learnable_reward(tmp_path):
    model_dir, data_dir = make_assets(tmp_path)
    base = tiny_config(model_dir, data_dir, tmp_path / "out")
    config = dataclasses.replace(base, sft=SFTSection(steps=0), data=dataclasses.replace(base.data, num_epochs=3),
                                 optim=OptimSection(learning_rate=3e-2, schedule="constant", freeze_vision=True))
    trainer = Trainer(config, train=TrainSection(max_steps=STEPS, progress=False, tensorboard=False,
                                                 eval_after_sft=False, eval_at_end=False))
    trainer.reward_fn = shortness
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    rewards = [r["reward/total_mean"] for r in log if r["stage"] == "grpo"]
    assert len(rewards) == STEPS
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert last > first + 2.0, rewards  # completions at least 200 characters shorter on average
