"""The training loop: supervised warm start, then the method's two-pass GRPO (method.md sections 4-5).

Stage 1, warm start (`sft.steps` > 0): cross-entropy on reference completions written from each
record (`jaxbiqa.rl.references`), the prompt masked; with `train.sft_pass2` the same step also
trains pass 2 (the caption-only prompt -> the reference's think + answer). Trains what
`sft.optim.freeze_vision` / LoRA leave trainable, with `sft.optim`.

Stage 2, GRPO, one rollout per step:
1. a batch of B pass-1 prompts (image + question) from the data pipeline;
2. the rollout (`jaxbiqa.rollout.Rollout`, one compiled program): G samples per prompt, then pass 2
   from each sample's caption alone;
3. rewards on the host from the decoded texts (`config.rewards`; self-consistency reads the pass-2
   texts), computed in a worker thread while the main thread packs the update batch and dispatches
   the reference / old log-probs to the device;
4. group advantages (`grpo.advantage`), the update (`rl.step.TrainStep`, `num_iterations` times,
   old log-probs stored before the first when > 1), pass-2 tokens included with `train.train_pass2`.
The reference policy (beta > 0) is the policy as GRPO starts (after the warm start): LoRA adapters
zeroed when training LoRA (no second copy of the base), else a copy of the trainable parameters.
The GRPO checkpoints do not store it (a full copy of the trainable parameters each): a resumed run
rebuilds it from where it came from. Zeroed adapters need nothing; other trainable parameters
(full fine-tuning, or a trainable vision tower) are reloaded from `model.path` when GRPO starts
from its weights (no warm start), else (after a warm start, or from a random init) they are saved
once as GRPO starts, in `<checkpoints>/reference` (`Checkpointer.save_item`), and read from there.

Checkpoints (`config.checkpoint`, under `<output_dir>/checkpoints`): the stage's train state, the
RNG key, the data iterator position and the resolved config (beside them, once: the reference), every
`save_interval_steps` steps, at the end of each stage and on SIGTERM (saved after the current
step, then `run` returns `preempted`). Steps count both stages: 1..S are warm-start steps, S+1..
are GRPO rollouts, so a checkpoint's step says which state it holds. Randomness: step k uses
`fold_in(key, k)`, so a resumed run draws what the uninterrupted one would have.

At the end: the policy as a Hugging Face checkpoint (`<output_dir>/policy`, LoRA merged, with the
tokenizer) and the evaluation hook (`jaxbiqa.eval.evaluate` with `config.eval`, `<output_dir>/eval/`).

Meshes and processes (`Trainer.from_runtime`: `config.runtime` via `jaxbiqa.distributed.setup`,
or an explicit `mesh`). The run on a mesh, on one process or several, does what the one-device
run does: the same global batches, the same samples, the same rewards and updates.
* Data: `data.global_batch_size` (and `train.sft_batch_size`, `eval.batch_size`) count
  records over all processes; of P processes, process i reads its contiguous 1/P slice of each
  global batch (`data.pipeline.ProcessRows`), decoding only its own images, then
  `distributed.gather_rows` gives every process the whole global batch on the host. The batch
  plan (`data.pipeline.BatchPlan`: batches of one image size each) depends on the records, the
  seed and the global batch size only, so steps, schedule and epochs are the same on any number
  of processes and any mesh. Vision plans are cached per (image grid, image count).
* Device work takes the global batch: update batches become global arrays split over the
  mesh's batch axes (`distributed.shard_batch`), the rollout's prompts go in as host arrays.
  Sampling draws with `fold_in(key, step)` over the whole `[rows, vocab]` block with JAX's
  partitionable threefry, so a row's tokens do not depend on how rows are laid out on devices.
* The host reads device results with `distributed.fetch`: every process gets all rollout rows,
  decodes all texts and computes all rewards and advantages (rewards may compare rows, e.g.
  ranking), identical on every process, with no reward exchange.
* Process 0 alone writes config.json, logs, samples, summary, the exported policy and the
  evaluation's predictions; every process takes part in checkpoints (orbax writes each array's
  shards collectively; the data position is saved per process, so resuming with the data
  position needs the same process count, while the arrays restore on any mesh).
* Evaluation: every process reads the whole eval split and runs the same evaluation rollout over the
  mesh; process 0 writes the predictions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxbiqa import distributed
from jaxbiqa.checkpoint import Checkpointer, PreemptionGuard, restore_target
from jaxbiqa.config import Config, TrainSection, check_master_weights, eval_settings, to_dict
from jaxbiqa.data.pipeline import Pass1Preprocess, batches_per_epoch, make_pipeline, per_shard, shard_options
from jaxbiqa.eval.evaluate import METRICS_FILE, PREDICTIONS_FILE, evaluate
from jaxbiqa.models.build import abstract_policy, build_policy, build_processor, has_weights, resolve_model_path
from jaxbiqa.models.qwen2_5_vl import save_pretrained, trainable_filter, vision_plan
from jaxbiqa.rewards import build_reward, parse_ratings, reward_specs, split_caption
from jaxbiqa.rl import batches
from jaxbiqa.rl.losses import group_advantages
from jaxbiqa.rl.metrics_log import MetricsLogger
from jaxbiqa.rl.references import reference_completion
from jaxbiqa.rl.step import ROW_AXIS, TrainState, TrainStep, grpo_loss
from jaxbiqa.rollout import Rollout, sampler
from jaxbiqa.sft.loss import sft_loss
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules

log = logging.getLogger("jaxbiqa.train")

CONFIG_FILE = "config.json"
POLICY_DIR = "policy"
EVAL_DIR = "eval"
EVAL_COLUMNS = {"image": "overall_score", "caption": "caption_score", "caption_think": "reasoning_score"}
SUMMARY_FILE = "summary.json"
REFERENCE_ITEM = "reference"  # <checkpoints>/reference: the reference policy, when saved (module docstring)


@dataclasses.dataclass
class TrainResult:
    step: int                       # the last step done (both stages counted)
    preempted: bool                 # stopped by SIGTERM after saving; resume with `resume=True`
    eval: dict[str, dict] = dataclasses.field(default_factory=dict)  # "sft" / "final" -> evaluate() output
    policy_dir: str | None = None


def train_section(config: Config) -> TrainSection:
    """The config's `train` section (defaults when the config has none)."""
    return getattr(config, "train", None) or TrainSection()


def _records(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The per-record fields (1-D entries) of a collated data batch, one dict per record."""
    fields = {k: v for k, v in batch.items() if np.ndim(v) == 1}
    rows = len(next(iter(fields.values())))
    return [{k: v[i] for k, v in fields.items()} for i in range(rows)]


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": float(values.std()),
            f"{prefix}_min": float(values.min()), f"{prefix}_max": float(values.max())}


def _cache_size(fn) -> int:
    return fn._cache_size() if hasattr(fn, "_cache_size") else 0


def rollout_compile_count() -> int:
    """Compiled programs of the rollout engine (the two-pass program, the sampler's prefill and decode)."""
    return Rollout.compile_count() + sum(_cache_size(f) for f in (sampler._prefill_program, sampler._decode_program))


class Trainer:
    """One training run of `config` (see the module docstring); `run()` does it, resuming with `resume=True`.

    `train` overrides the config's `train` section; `mesh` places parameters and batches by
    `rules` (None: one device, one process); `from_runtime` takes both from `config.runtime`.
    """

    def __init__(self, config: Config, *, train: TrainSection | None = None, mesh: Mesh | None = None,
                 rules: LogicalRules = DEFAULT_RULES):
        check_master_weights(config)
        self.config = config
        self.train = train or train_section(config)
        self.mesh = mesh
        self.rules = rules
        self.output_dir = Path(config.output_dir)
        self.main_process = jax.process_index() == 0
        if jax.process_count() > 1:
            if mesh is None:
                raise ValueError(f"a run on {jax.process_count()} processes needs a mesh over their devices "
                                 "(Trainer.from_runtime builds it from config.runtime)")
            shard = shard_options(config.data)
            if (shard.shard_index, shard.shard_count) != (jax.process_index(), jax.process_count()):
                raise ValueError(f"data.shard_index / shard_count ({shard.shard_index}, {shard.shard_count}) must "
                                 "be left unset in a multi-process run: each process reads its own share")
            if not config.data.drop_remainder:
                raise ValueError("data.drop_remainder=False runs on one process only: a short batch would leave "
                                 "some processes without rows")
        shards = shard_options(config.data).shard_count
        per_shard(config.data.global_batch_size, shards)
        if self.train.sft_batch_size:
            per_shard(self.train.sft_batch_size, shards, "train.sft_batch_size")
        self.sft_pass2 = self.train.sft_pass2 and config.rollout.two_pass  # a one-pass rollout has no pass 2
        if self.train.train_pass2 and not config.rollout.two_pass:
            raise ValueError("train.train_pass2 needs rollout.two_pass")
        if self.train.train_pass2 and config.rollout.pass2.num_samples != 1:
            raise ValueError("train.train_pass2 needs rollout.pass2.num_samples == 1 (one pass-2 row per sample)")
        self.processor = build_processor(config.model, config.data)
        self.tokenizer = self.processor.tokenizer
        self.preprocess = Pass1Preprocess(self.processor)
        self.reward_fn = build_reward(reward_specs(config.rewards))
        self.eos_ids = tuple(config.rollout.pass1.eos_token_ids)
        if not self.eos_ids:
            raise ValueError("rollout.pass1.eos_token_ids is empty: the warm start needs an end-of-turn token")
        self.key = jax.random.key(config.seed)
        self._vision_plans: dict[tuple[tuple[int, ...], int], Any] = {}  # (grid, images) -> vision plan

    @classmethod
    def from_runtime(cls, config: Config, *, train: TrainSection | None = None) -> "Trainer":
        """A trainer on the mesh and rules of `config.runtime`, after starting the multi-process
        runtime when the environment calls for one (`jaxbiqa.distributed.setup`; call this before
        anything else touches a device)."""
        runtime = distributed.setup(config.runtime)
        return cls(config, train=train, mesh=runtime.mesh, rules=runtime.rules)

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def grpo_steps(self) -> int:
        """GRPO steps (rollouts) of the run: the train split's batches x epochs, capped at `train.max_steps`."""
        data = self.config.data
        if data.num_epochs is None:
            if not self.train.max_steps:
                raise ValueError("data.num_epochs is None (no end): set train.max_steps")
            return self.train.max_steps
        steps = batches_per_epoch(data) * data.num_epochs  # the same on any number of processes
        if steps < 1 and not self.train.max_steps:
            raise ValueError(f"the train split has no batch of {data.global_batch_size} records of one image size "
                             "(data.global_batch_size)")
        return min(steps, self.train.max_steps) if self.train.max_steps else steps

    def total_steps(self) -> int:
        return self.config.sft.steps + self.grpo_steps

    # ------------------------------------------------------------------ pieces

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _pipeline(self, global_batch_size: int, num_epochs: int | None, split: str = "train") -> Iterator:
        data = dataclasses.replace(self.config.data, global_batch_size=global_batch_size, num_epochs=num_epochs)
        return iter(make_pipeline(data, split, preprocess=self.preprocess))

    @staticmethod
    def _next_batch(iterator: Iterator) -> dict[str, np.ndarray] | None:
        """The next global batch on every process (`distributed.gather_rows`); None once any
        process's data has ended, so that all stop at the same step."""
        try:
            local = next(iterator)
        except StopIteration:
            local = None
        return distributed.gather_rows(local)

    def _device_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """An update batch held in full by every process -> global arrays on the mesh (unchanged
        without one)."""
        if self.mesh is None:
            return dict(batch)
        return distributed.shard_batch(batch, self.mesh, ROW_AXIS, self.rules)

    def _vision_plan(self, grid: np.ndarray, images: int):
        """The vision plan of `images` images of one grid (the micro-batch's share), cached per (grid, images)."""
        key = (tuple(int(v) for v in grid), images)
        if key not in self._vision_plans:
            self._vision_plans[key] = vision_plan(np.repeat(grid[None], images, 0), self._model_config.vision)
        return self._vision_plans[key]

    def _micro_rows(self, rows: int, optim) -> int:
        return optim.micro_batch_size if optim.micro_batch_size and optim.micro_batch_size < rows else rows

    def _trainable(self, optim):
        return trainable_filter(lora=self.config.model.lora_rank > 0, freeze_vision=optim.freeze_vision)

    def _dropout_key(self, key: jax.Array) -> jax.Array | None:
        model = self.config.model
        return key if model.lora_rank > 0 and model.lora_dropout > 0 else None

    def _mesh(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    # ------------------------------------------------------------------ run

    def run(self, resume: bool = False) -> TrainResult:
        config, train = self.config, self.train
        self.output_dir.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer.from_section(config.checkpoint, self.output_dir)
        latest = checkpointer.latest_step()
        if latest is not None and not resume:
            raise FileExistsError(f"{checkpointer.directory} already holds checkpoints (latest step {latest}): "
                                  "resume with --resume, or choose another output_dir")
        self._check_saved_config(resume)
        sft_steps, total = config.sft.steps, self.total_steps()
        start = latest or 0
        result = TrainResult(step=start, preempted=False)
        logger = MetricsLogger(self.output_dir, total_steps=total, initial_step=min(start, total),
                               tensorboard=train.tensorboard, progress=train.progress, enabled=self.main_process)
        try:
            with PreemptionGuard() as guard:
                # resuming: the structure is enough, the checkpoint has the values
                model = (abstract_policy(config.model, seed=config.seed) if start
                         else build_policy(config.model, seed=config.seed, mesh=self.mesh, rules=self.rules))
                self._model_config = model.config
                self.rollout = Rollout.from_processor(config.rollout, self.processor, model.config.text.vocab_size)
                if sft_steps and start <= sft_steps:
                    model, stopped = self._sft_stage(model, checkpointer, logger, guard, start)
                    result.step = max(start, sft_steps) if not stopped else stopped
                    if stopped:
                        result.preempted = True
                        return result
                    if train.eval_after_sft:
                        result.eval["sft"] = self._evaluate(model, logger, sft_steps, "sft")
                model, stopped, step = self._grpo_stage(model, checkpointer, logger, guard, start)
                result.step = step
                if stopped:
                    result.preempted = True
                    return result
                result.policy_dir = self._export(model)
                if train.eval_at_end:
                    result.eval["final"] = self._evaluate(model, logger, step, "final")
                self._write_summary(result)
        finally:
            checkpointer.close()
            logger.close()
        return result

    def _check_saved_config(self, resume: bool) -> None:
        path = self.output_dir / CONFIG_FILE
        current = to_dict(self.config)
        if resume and path.is_file():
            saved = json.loads(path.read_text())
            if saved != current:
                changed = sorted(_diff(saved, current))
                log.warning("resuming with a config that differs from the saved one in %s; the run is exact "
                            "only with the same config", ", ".join(changed))
        if self.main_process:
            path.write_text(json.dumps(current, indent=2) + "\n")

    # ------------------------------------------------------------------ stage 1: warm start

    def _sft_batch(self, model, data: Mapping[str, np.ndarray]) -> tuple[dict, dict, int]:
        rollout = self.rollout
        prompts = batches.prompt_batch(lambda *a: rollout.prepare(model, *a), data)
        records = _records(data)
        completions = [reference_completion(r) for r in records]
        ids, valid, cut = batches.encode_completions(completions, self._encode, self.eos_ids[0],
                                                     rollout.config.pass1.max_new_tokens)
        batch = batches.sft_pass1(prompts, ids, valid, self.eos_ids, data["pixel_values"])
        if self.sft_pass2:
            until = rollout.config.caption_until
            captions = [split_caption(c, until=until) or "" for c in completions]
            # a caption the rollout could not take (longer than max_caption) is not taught either
            captions = [c if len(self._encode(c)) <= rollout.max_caption else "" for c in captions]
            prompts2 = [self._encode(self.processor.pass2_text(c)) for c in captions]
            targets = [c[len(cap):] for c, cap in zip(completions, captions)]
            ids2, valid2, cut2 = batches.encode_completions(targets, self._encode, self.eos_ids[0],
                                                            rollout.config.pass2.max_new_tokens)
            valid2 *= np.asarray([bool(c) for c in captions], np.int32)[:, None]
            part = batches.text_rows(model.config, prompts2, ids2, valid2, self.eos_ids, rollout.pass2_width,
                                     rollout.config.pass2.pad_token_id)
            cut += sum(not c for c in captions)
            batch = batches.add_pass2(batch, part)
            cut += cut2
        grid = batches.same_image_grid(data["image_grid_thw"])
        rows = len(records)
        unsplit = {"vision_plan": self._vision_plan(grid, self._micro_rows(rows, self.config.sft.optim))}
        return batch, unsplit, cut

    def _sft_stage(self, model, checkpointer: Checkpointer, logger: MetricsLogger, guard: PreemptionGuard,
                   start: int) -> tuple[nnx.Module, int]:
        """Warm-start steps start+1..S; returns the model and the step it stopped at on SIGTERM (0: done)."""
        config = self.config
        section = config.sft
        loss = sft_loss(config.grpo.logprob_chunk_size)
        step_fn = TrainStep(model, batches.two_pass_loss(loss) if self.sft_pass2 else loss, section.optim,
                            max(section.steps, 1), trainable=self._trainable(section.optim), mesh=self.mesh,
                            rules=self.rules, logprob_chunk_size=config.grpo.logprob_chunk_size)
        batch_size = self.train.sft_batch_size or config.data.global_batch_size
        iterator = self._pipeline(batch_size, None)
        if start:
            restored = checkpointer.restore(restore_target(step_fn.abstract_state(model)), step=start,
                                            data_iterator=iterator)
            state, self.key = restored.state, restored.key
            log.info("resumed the warm start at step %d", start)
        else:
            state = step_fn.init(model)
        step = start
        last = time.perf_counter()
        while step < section.steps:
            step += 1
            data = self._next_batch(iterator)  # the warm start's data repeats: it does not end
            batch, unsplit, cut = self._sft_batch(model, data)
            key = jax.random.fold_in(self.key, step)
            state, metrics = step_fn(state, self._device_batch(batch), self._dropout_key(key), unsplit)
            metrics = distributed.fetch(metrics)
            now = time.perf_counter()
            tokens = int(np.sum(batch["attention_mask"])) + int(np.sum(batch.get("pass2_attention_mask", 0)))
            record = {**{k: float(v) for k, v in metrics.items()}, "completions_cut": cut,
                      "step_time": now - last, "tokens_per_second": tokens / max(now - last, 1e-9),
                      "compile_count/update": step_fn.compile_count}
            last = now
            if step % self.train.log_every == 0 or step == section.steps:
                logger.write(step, "sft", record)
            logger.advance(1, loss=record["loss"])
            stop = guard.should_stop()
            if step % config.checkpoint.save_interval_steps == 0 or step == section.steps or stop:
                checkpointer.save(step, state, key=self.key, data_iterator=iterator, config=config, force=True)
            if stop:
                checkpointer.wait()
                log.warning("SIGTERM: saved step %d; resume with --resume", step)
                return step_fn.model(state), step
        return step_fn.model(state), 0

    # ------------------------------------------------------------------ stage 2: GRPO

    def _grpo_step_fn(self, model) -> TrainStep:
        config = self.config
        loss = grpo_loss(config.grpo)
        if self.train.train_pass2:
            loss = batches.two_pass_loss(loss)
        updates = max(self.grpo_steps * config.grpo.num_iterations, 1)
        return TrainStep(model, loss, config.optim, updates, trainable=self._trainable(config.optim), mesh=self.mesh,
                         rules=self.rules, logprob_chunk_size=config.grpo.logprob_chunk_size)

    def _grpo_stage(self, model, checkpointer: Checkpointer, logger: MetricsLogger, guard: PreemptionGuard,
                    start: int) -> tuple[nnx.Module, int, int]:
        """GRPO rollouts after the warm start; returns (model, step stopped at on SIGTERM or 0, last step)."""
        config, train = self.config, self.train
        sft_steps, grpo = config.sft.steps, config.grpo
        step_fn = self._grpo_step_fn(model)
        iterator = self._pipeline(config.data.global_batch_size, config.data.num_epochs)
        resumed = start > sft_steps
        if resumed:
            target = {"train": step_fn.abstract_state(model)}
            restored = checkpointer.restore(restore_target(target), step=start, data_iterator=iterator)
            state, self.key = restored.state["train"], restored.key
            log.info("resumed GRPO at step %d", start)
        else:
            state = step_fn.init(model)
        reference = self._reference(step_fn, state, checkpointer, resumed) if grpo.beta > 0 else None
        total = sft_steps + self.grpo_steps
        step = max(start, sft_steps)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewards")
        try:
            last = time.perf_counter()
            while step < total:
                data = self._next_batch(iterator)
                if data is None:
                    log.info("the train data ended after step %d", step)
                    break
                step += 1
                state, record, samples = self._grpo_step(step_fn, state, reference, data, step, pool)
                now = time.perf_counter()
                record["step_time"] = now - last
                record["train_tokens_per_second"] = record.pop("_update_tokens") / max(now - last, 1e-9)
                last = now
                if step % train.log_every == 0 or step == total:
                    logger.write(step, "grpo", record)
                done = step - sft_steps
                if train.samples_every and (done == 1 or done % train.samples_every == 0):
                    logger.samples(step, "grpo", samples)
                logger.advance(1, reward=record["reward/total_mean"], kl=record.get("kl", 0.0))
                stop = guard.should_stop()
                if step % config.checkpoint.save_interval_steps == 0 or step == total or stop:
                    checkpointer.save(step, {"train": state}, key=self.key, data_iterator=iterator, config=config,
                                      force=True)
                if stop:
                    checkpointer.wait()
                    log.warning("SIGTERM: saved step %d; resume with --resume", step)
                    return step_fn.model(state), step, step
        finally:
            pool.shutdown(wait=True)
        if step not in checkpointer.all_steps() and step > sft_steps:
            checkpointer.save(step, {"train": state}, key=self.key, data_iterator=iterator, config=config, force=True)
        return step_fn.model(state), 0, step

    def _reference_from_model_path(self) -> bool:
        """Whether GRPO starts from `model.path`'s weights as loaded (no warm start): then the
        reference's non-adapter parameters are reloaded from there on resume, not stored."""
        return self.config.sft.steps == 0 and has_weights(resolve_model_path(self.config.model.path))

    def _reference(self, step_fn: TrainStep, state: TrainState, checkpointer: Checkpointer,
                   resumed: bool) -> nnx.State:
        """The reference policy's trainable-shaped parameters: the policy as GRPO starts (the
        frozen part is `state.frozen`). LoRA adapters are zeros; any other trainable parameters are
        their values at the start of GRPO: `TrainStep.reference_params` when it starts (saved once
        as `<checkpoints>/reference` unless `model.path` holds them), rebuilt from there on resume."""
        from_model = self._reference_from_model_path()
        if not resumed:
            reference = step_fn.reference_params(state)
            _, rest = reference.split(nnx.LoRAParam, ...)
            if jax.tree.leaves(rest) and not from_model:  # full fine-tuning, or a trainable vision tower
                checkpointer.save_item(REFERENCE_ITEM, rest)
                log.info("saved the reference policy in %s", checkpointer.directory / REFERENCE_ITEM)
            return reference
        adapters, rest = state.params.split(nnx.LoRAParam, ...)
        if jax.tree.leaves(rest):
            if from_model:
                rest = self._initial_params(step_fn, rest)
                log.info("reloaded the reference policy from model.path")
            elif checkpointer.has_item(REFERENCE_ITEM):
                rest = checkpointer.restore_item(REFERENCE_ITEM, restore_target(rest))
                log.info("restored the reference policy from %s", checkpointer.directory / REFERENCE_ITEM)
            else:
                raise FileNotFoundError(f"{checkpointer.directory / REFERENCE_ITEM} is missing: resuming GRPO with "
                                        "grpo.beta > 0 needs the reference policy saved there as GRPO started")
        return nnx.merge_state(jax.tree.map(jnp.zeros_like, adapters), rest)

    def _initial_params(self, step_fn: TrainStep, like: nnx.State) -> nnx.State:
        """The non-adapter trainable parameters of the policy as `build_policy` loads it, placed
        and structured like `like` (the same parameters of the train state)."""
        model = build_policy(self.config.model, seed=self.config.seed, mesh=self.mesh, rules=self.rules)
        _, params, _ = nnx.split(model, step_fn.trainable, ...)
        _, loaded = params.split(nnx.LoRAParam, ...)
        source, target = (jax.tree_util.tree_flatten_with_path(tree)[0] for tree in (loaded, like))
        if [(path, x.shape, x.dtype) for path, x in source] != [(path, x.shape, x.dtype) for path, x in target]:
            raise ValueError(f"the weights of model.path {self.config.model.path!r} do not match the train state")
        leaves = [jax.device_put(x, y.sharding) for (_, x), (_, y) in zip(source, target)]
        return jax.tree.unflatten(jax.tree.structure(like), leaves)

    def _image_features(self, step_fn: TrainStep, state: TrainState, data, plan) -> jax.Array:
        """`[B, tokens, hidden]` vision features of the batch's images (frozen vision tower)."""
        pixels = np.asarray(data["pixel_values"])
        with self._mesh():
            features = _features(step_fn.graphdef, state.params, state.frozen,
                                 jnp.asarray(pixels.reshape(-1, pixels.shape[-1])), plan)
        return features.reshape(pixels.shape[0], -1, features.shape[-1])

    def _grpo_step(self, step_fn: TrainStep, state: TrainState, reference, data, step: int,
                   pool: concurrent.futures.ThreadPoolExecutor) -> tuple[TrainState, dict, list]:
        config, grpo = self.config, self.config.grpo
        group = config.rollout.pass1.num_samples
        key = jax.random.fold_in(self.key, step)
        rollout_key, update_key = jax.random.split(key)
        policy = step_fn.model(state)
        prompts = batches.prompt_batch(lambda *a: self.rollout.prepare(policy, *a), data)
        t0 = time.perf_counter()
        with self._mesh():  # every row's result comes back to every process
            result = self.rollout(policy, prompts, rollout_key)
        rollout_time = time.perf_counter() - t0
        records = _records(data)
        rows = len(records) * group

        # rewards in a worker thread, while this thread packs the update batch for the device
        reward_batch = {k: np.repeat(v, group) for k, v in data.items() if np.ndim(v) == 1}
        reward_batch["group"] = np.repeat(np.arange(len(records)) + step * len(records), group)
        if result.pass2_texts is not None:
            reward_batch["pass2_completions"] = [t if ok else "" for t, ok in
                                                 zip(result.pass2_texts, result.has_caption)]
        t1 = time.perf_counter()
        rewards_future = pool.submit(self.reward_fn, result.pass1_texts, reward_batch)

        vision = self._model_config
        batch, placeholder_cuts = batches.grpo_pass1(
            prompts, result.pass1.tokens, result.pass1.lengths, group, self.eos_ids,
            placeholder_ids=(vision.image_token_id, vision.video_token_id), pad_id=config.rollout.pass1.pad_token_id)
        grid = batches.same_image_grid(data["image_grid_thw"])
        micro = self._micro_rows(rows, config.optim)
        unsplit = {}
        if config.optim.freeze_vision:  # the tower's features once per image, not per sample
            features = self._image_features(step_fn, state, data, self._vision_plan(grid, len(records)))
            batch["image_features"] = jnp.repeat(features, group, axis=0)
        else:
            pixels = np.asarray(data["pixel_values"])
            batch["pixel_values"] = np.repeat(pixels, group, axis=0)
            unsplit["vision_plan"] = self._vision_plan(grid, micro)
        update_tokens = int(np.sum(batch["attention_mask"]))
        batch = self._device_batch(batch)
        pass2_rows = pass2_on_device = None
        if self.train.train_pass2:  # host arrays (add_pass2 reorders them), and their device copy
            pass2_rows = batches.grpo_pass2(result.pass2_input_ids, result.pass2_attention_mask, result.pass2.tokens,
                                       result.pass2.lengths, result.has_caption, self.eos_ids)
            pass2_on_device = self._device_batch(pass2_rows)
        if reference is not None:  # dispatched before waiting for the rewards: overlaps with the host work
            batch["ref_logps"] = step_fn.logprobs(reference, state.frozen, batch, unsplit)
            if pass2_rows is not None:
                pass2_rows["ref_logps"] = step_fn.logprobs(reference, state.frozen, pass2_on_device)
        if grpo.num_iterations > 1:
            batch["old_logps"] = step_fn.logprobs(state.params, state.frozen, batch, unsplit)
            if pass2_rows is not None:
                pass2_rows["old_logps"] = step_fn.logprobs(state.params, state.frozen, pass2_on_device)

        total, components = rewards_future.result()
        reward_time = time.perf_counter() - t1
        advantages = np.asarray(group_advantages(total, group, grpo.advantage, grpo.advantage_epsilon))
        batch["advantages"] = advantages
        if pass2_rows is not None:
            pass2_rows["advantages"] = advantages
            batch = batches.add_pass2(batch, pass2_rows)
        batch = self._device_batch(batch)
        metrics = None
        for iteration in range(grpo.num_iterations):
            state, metrics = step_fn(state, batch, self._dropout_key(jax.random.fold_in(update_key, iteration)),
                                     unsplit)

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
        metrics = distributed.fetch(metrics)
        record.update({k: float(v) for k, v in metrics.items()})
        record["compile_count/update"] = step_fn.compile_count
        record["compile_count/logprobs"] = _cache_size(step_fn._logprobs)
        record["compile_count/rollout"] = rollout_compile_count()
        record["_update_tokens"] = update_tokens * grpo.num_iterations
        samples = self._samples(records, result, total, components)
        return state, record, samples

    def _samples(self, records, result, total, components) -> list[dict[str, Any]]:
        group = self.config.rollout.pass1.num_samples
        out = []
        for b, record in enumerate(records[: self.train.samples_per_log]):
            for g in range(group):
                row = b * group + g
                entry = {"id": str(record.get("id", "?")), "mos_norm": float(record["mos_norm"]), "sample": g,
                         "reward": float(total[row]),
                         **{f"reward/{k}": float(v[row]) for k, v in components.items()},
                         "pass1": result.pass1_texts[row]}
                if result.pass2_texts is not None:
                    entry["pass2"] = result.pass2_texts[row] if result.has_caption[row] else "(no caption: skipped)"
                out.append(entry)
        return out

    # ------------------------------------------------------------------ end of run

    def _export(self, model) -> str | None:
        path = self.output_dir / POLICY_DIR
        save_pretrained(model, path)
        if self.main_process:
            self.processor.save_pretrained(path)
        return str(path)

    def _evaluate(self, model, logger: MetricsLogger, step: int, name: str) -> dict[str, Any]:
        """Evaluation of the eval split with `jaxbiqa.eval.evaluate` and `config.eval` into `eval/<name>/`.

        Returns the record count, the metrics file and, per dataset, the image-conditioned
        (`image`), caption-only (`caption`) and caption + think (`caption_think`) metrics; the
        first dataset (by name) is also at the top level. With several processes each reads the
        whole eval split and runs the same batches over the mesh; process 0's files are kept.
        """
        config = self.config
        settings = eval_settings(config)
        # every process reads the whole split: one shard
        data = dataclasses.replace(config.data, global_batch_size=settings.batch_size, shard_index=0, shard_count=1)
        eval_batches = make_pipeline(data, "eval", preprocess=self.preprocess)
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._mesh())
            folder = (self.output_dir / EVAL_DIR / name if self.main_process
                      else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxbiqa-eval-"))))
            result = evaluate(model, self.processor, eval_batches, folder, rollout=config.rollout, settings=settings)
        datasets = {dataset: {label: entry["columns"][column] for label, column in EVAL_COLUMNS.items()
                              if column in entry["columns"]} | {"gap": entry.get("gap")}
                    for dataset, entry in result.metrics["datasets"].items()}
        if not datasets:
            raise ValueError(f"evaluation '{name}': no eval record has a target MOS")
        out: dict[str, Any] = {"n": result.n, "metrics": str(self.output_dir / EVAL_DIR / name / METRICS_FILE),
                               "predictions": str(self.output_dir / EVAL_DIR / name / PREDICTIONS_FILE),
                               "eval_time": time.perf_counter() - start, "datasets": datasets,
                               **next(iter(datasets.values()))}
        scalars = {}
        for dataset, entry in datasets.items():
            prefix = name if len(datasets) == 1 else f"{name}/{dataset}"
            for label, metrics in entry.items():
                if label != "gap":
                    stem = "" if label == "image" else f"{label}_"
                    scalars |= {f"{prefix}/{stem}srcc": metrics["srcc"], f"{prefix}/{stem}plcc": metrics["plcc"]}
            scalars[f"{prefix}/parse_failures"] = entry["image"]["n_invalid"]
        logger.write(step, "eval", scalars)
        log.info("evaluation (%s): %d records, SRCC %.3f, PLCC %.3f", name, out["n"], out["image"]["srcc"] or 0,
                 out["image"]["plcc"] or 0)
        return out

    def _write_summary(self, result: TrainResult) -> None:
        if self.main_process:
            (self.output_dir / SUMMARY_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")


@functools.partial(jax.jit, static_argnums=0)
def _features(graphdef, params, frozen, pixels, plan):
    return nnx.merge(graphdef, params, frozen).get_image_features(pixels, plan)


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
