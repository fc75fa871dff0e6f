"""One GRPO step of the method (method.md section 5): rollout -> rewards -> advantages -> reference
(and old) log-probs -> update.

1. the rollout (`jaxbiqa.rollout.Rollout`, one compiled program) on the rollout's copy of the
   policy (`rollout.policy_layout`, `jaxbiqa.rollout.policy_copy`, made from the master weights
   by one jitted cast-and-reshard): G samples per prompt of the batch, then pass 2 from each
   sample's caption alone;
2. rewards on the host from the decoded texts (self-consistency reads the pass-2 texts), computed
   in a worker thread while this thread packs the update batch and dispatches the reference / old
   log-probs to the device;
3. group advantages (`grpo.advantage`), then the update (`rl.step.UpdateStep`, `num_iterations`
   times; old log-probs stored before the first when > 1), pass-2 rows included with
   `train.train_pass2` (each with its pass-1 sample's advantage). With the vision tower frozen the
   update reuses the image features the rollout's prefill computed (no second tower run, no
   second upload of the pixels).
Every process holds the whole global batch and every row's result, so rewards and advantages are
computed identically everywhere; update batches go to the mesh as global arrays (`Placement`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbiqa import distributed
from jaxbiqa.config import Config
from jaxbiqa.distributed import Placement
from jaxbiqa.rewards import parse_ratings
from jaxbiqa.rl import batches
from jaxbiqa.rl.losses import group_advantages
from jaxbiqa.rl.step import ROW_AXIS, TrainState, UpdateStep, dropout_key
from jaxbiqa.rollout import Rollout, sampler
from jaxbiqa.rollout.policy_copy import PolicyCopy


def _cache_size(fn) -> int:
    return fn._cache_size() if hasattr(fn, "_cache_size") else 0


def rollout_compile_count() -> int:
    """Compiled programs of the rollout engine (the two-pass program, the sampler's prefill and decode)."""
    return Rollout.compile_count() + sum(_cache_size(f) for f in (sampler._prefill_program, sampler._decode_program))


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": float(values.std()),
            f"{prefix}_min": float(values.min()), f"{prefix}_max": float(values.max())}


class GRPOStep:
    """`step(state, data, step, key) -> (state, record, samples)` for one global data batch.

    `update` is the GRPO `UpdateStep`; `reference` the reference policy's trainable-shaped
    parameters (None when `grpo.beta == 0`); `reward_fn(texts, batch) -> (total, components)`.
    """

    def __init__(self, config: Config, *, rollout: Rollout, reward_fn: Callable, update: UpdateStep,
                 reference: Any, placement: Placement, plans: batches.VisionPlans, eos_ids: Sequence[int],
                 train_pass2: bool, samples_per_log: int):
        self.config = config
        self.rollout, self.reward_fn, self.update, self.reference = rollout, reward_fn, update, reference
        self.placement, self.plans, self.eos_ids = placement, plans, tuple(eos_ids)
        self.train_pass2, self.samples_per_log = train_pass2, samples_per_log
        self.group = config.rollout.pass1.num_samples
        self.policy_copy = PolicyCopy(config.rollout.policy_layout, config.model.dtype, placement.mesh,
                                      placement.rules)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewards")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _global(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return self.placement.global_batch(batch, ROW_AXIS)

    def __call__(self, state: TrainState, data: Mapping[str, np.ndarray], step: int,
                 key: jax.Array) -> tuple[TrainState, dict[str, Any], list[dict[str, Any]]]:
        config, grpo, group, update = self.config, self.config.grpo, self.group, self.update
        rollout_key, update_key = jax.random.split(key)
        policy = update.model(state)
        t0 = time.perf_counter()
        with self.placement.scope():  # every row's result comes back to every process
            decoder = self.policy_copy(policy)
            prompts = batches.prompt_batch(functools.partial(self.rollout.prepare, decoder), data)
            result = self.rollout(decoder, prompts, rollout_key)
        del decoder  # a copy is not kept through the update
        rollout_time = time.perf_counter() - t0
        if result.interrupted:  # a pre-emption notice: the step is abandoned before any update
            raise InterruptedError(f"the rollout of step {step} was stopped by a signal")
        records = batches.record_rows(data)
        rows = len(records) * group

        # rewards in a worker thread, while this thread packs the update batch for the device
        reward_batch = {k: np.repeat(v, group) for k, v in data.items() if np.ndim(v) == 1}
        reward_batch["group"] = np.repeat(np.arange(len(records)) + step * len(records), group)
        if result.pass2_texts is not None:
            reward_batch["pass2_completions"] = [t if ok else "" for t, ok in
                                                 zip(result.pass2_texts, result.has_caption)]
        t1 = time.perf_counter()
        rewards_future = self._pool.submit(self.reward_fn, result.pass1_texts, reward_batch)

        # the update rows, built on device from the rollout's own arrays (no host rebuild)
        device = result.device
        with self.placement.scope():
            batch, placeholder_cuts = batches.grpo_pass1(
                prompts, device.pass1.tokens, device.pass1.lengths, group=group, eos_ids=self.eos_ids,
                placeholder_ids=(policy.config.image_token_id, policy.config.video_token_id),
                pad_id=config.rollout.pass1.pad_token_id)
            pass2_rows = None
            if self.train_pass2:
                pass2_rows = batches.grpo_pass2(device.pass2_input_ids, device.pass2_attention_mask,
                                                device.pass2.tokens, device.pass2.lengths, device.has_caption,
                                                eos_ids=self.eos_ids)
        update_tokens = batch["attention_mask"].sum()  # read with the step's metrics
        grid = batches.same_image_grid(data["image_grid_thw"])
        unsplit = {}
        if config.optim.freeze_vision:  # the features the rollout's prefill computed: no second tower run
            with self.placement.scope():
                features = device.image_features.reshape(len(records), -1, device.image_features.shape[-1])
                batch["image_features"] = jnp.repeat(features, group, axis=0)
        else:
            batch["pixel_values"] = np.repeat(np.asarray(data["pixel_values"]), group, axis=0)
            unsplit["vision_plan"] = self.plans(grid, batches.micro_rows(rows, config.optim))
        batch = self._global(batch)
        if self.reference is not None:  # dispatched before waiting for the rewards: overlaps with the host work
            batch["ref_logps"] = update.logprobs(self.reference, state.frozen, batch, unsplit)
            if pass2_rows is not None:
                pass2_rows["ref_logps"] = update.logprobs(self.reference, state.frozen, pass2_rows)
        if grpo.num_iterations > 1:
            batch["old_logps"] = update.logprobs(state.params, state.frozen, batch, unsplit)
            if pass2_rows is not None:
                pass2_rows["old_logps"] = update.logprobs(state.params, state.frozen, pass2_rows)

        total, components = rewards_future.result()
        reward_time = time.perf_counter() - t1
        advantages = np.asarray(group_advantages(total, group, grpo.advantage, grpo.advantage_epsilon))
        batch["advantages"] = advantages
        if pass2_rows is not None:
            pass2_rows["advantages"] = advantages
            batch = batches.add_pass2(batch, pass2_rows)
        batch = self._global(batch)
        metrics = None
        for iteration in range(grpo.num_iterations):
            state, metrics = update(state, batch, dropout_key(config, jax.random.fold_in(update_key, iteration)),
                                    unsplit)

        metrics, placeholder_cuts, update_tokens = distributed.fetch((metrics, placeholder_cuts, update_tokens))
        record = self._record(result, total, components, advantages, int(placeholder_cuts), rollout_time,
                              reward_time)
        record.update({k: float(v) for k, v in metrics.items()})
        record["compile_count/update"] = update.compile_count
        record["compile_count/logprobs"] = _cache_size(update._logprobs)
        record["compile_count/rollout"] = rollout_compile_count() + self.policy_copy.compile_count()
        record["_tokens"] = int(update_tokens) * grpo.num_iterations
        return state, record, self._samples(records, result, total, components)

    @staticmethod
    def _record(result, total, components, advantages, placeholder_cuts: int, rollout_time: float,
                reward_time: float) -> dict[str, Any]:
        ratings1 = parse_ratings(result.pass1_texts)
        lengths1 = np.asarray(result.pass1.lengths)
        record: dict[str, Any] = {
            "reward/total_mean": float(np.mean(total)), "reward/total_std": float(np.std(total)),
            **{f"reward/{name}": float(np.mean(values)) for name, values in components.items()},
            **_stats("advantage", advantages),
            "completion_length/pass1_mean": float(lengths1.mean()),
            "completion_length/pass1_max": int(lengths1.max()),
            "truncated/pass1": float(np.mean(~np.asarray(result.pass1.finished))),
            "parse_failures/pass1": int(np.sum(~np.isfinite(ratings1))),
            "placeholder_cuts": placeholder_cuts,
            "rating/pass1_mean": float(np.nanmean(ratings1)) if np.isfinite(ratings1).any() else float("nan"),
            "rollout_time": rollout_time, "reward_time": reward_time,
            "rollout_tokens_per_second": float(lengths1.sum()) / max(rollout_time, 1e-9),
        }
        if result.pass2 is not None:
            ratings2 = parse_ratings(result.pass2_texts)
            lengths2 = np.asarray(result.pass2.lengths)
            record.update({
                "completion_length/pass2_mean": float(lengths2.mean()),
                "has_caption": float(np.mean(result.has_caption)),
                "parse_failures/pass2": int(np.sum(~np.isfinite(ratings2) | ~np.asarray(result.has_caption))),
                "rollout_tokens_per_second": float(lengths1.sum() + lengths2.sum()) / max(rollout_time, 1e-9),
            })
        return record

    def _samples(self, records, result, total, components) -> list[dict[str, Any]]:
        out = []
        for b, record in enumerate(records[: self.samples_per_log]):
            for g in range(self.group):
                row = b * self.group + g
                entry = {"id": str(record.get("id", "?")), "mos_norm": float(record["mos_norm"]), "sample": g,
                         "reward": float(total[row]),
                         **{f"reward/{k}": float(v[row]) for k, v in components.items()},
                         "pass1": result.pass1_texts[row]}
                if result.pass2_texts is not None:
                    entry["pass2"] = result.pass2_texts[row] if result.has_caption[row] else "(no caption: skipped)"
                out.append(entry)
        return out
