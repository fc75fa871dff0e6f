"""The training loop: supervised warm start, then the method's two-pass GRPO (method.md sections 4-5).

One stage-agnostic loop (`Trainer._run_stage`: data, step, logs, samples, checkpoint cadence,
pre-emption) runs both stages, each given as a `Stage` with its step function:
* warm start (`sft.steps` > 0): `jaxbiqa.sft.warm_start.WarmStartStep`, cross-entropy on reference
  completions (pass 2 too with `train.sft_pass2`), training what `sft.optim.freeze_vision` / LoRA
  leave trainable, with `sft.optim`;
* GRPO, one rollout per step: `jaxbiqa.rl.grpo_step.GRPOStep` (rollout -> rewards -> advantages
  -> reference -> update), with `optim`.
The reference policy (beta > 0) is the policy as GRPO starts (after the warm start): LoRA adapters
zeroed when training LoRA (no second copy of the base), else a copy of the trainable parameters.
The GRPO checkpoints do not store it (a full copy of the trainable parameters each): a resumed run
rebuilds it from where it came from. Zeroed adapters need nothing; other trainable parameters
(full fine-tuning, or a trainable vision tower) are reloaded from `model.path` when GRPO starts
from its weights (no warm start), else (after a warm start, or from a random init) they are saved
once as GRPO starts, in `<checkpoints>/reference` (`Checkpointer.save_item`), and read from there.

Checkpoints (`config.checkpoint`, under `<output_dir>/checkpoints`): the stage's train state, the
RNG key, the data iterator position and the resolved config (beside them, once: the reference), every
`save_interval_steps` steps or `save_interval_minutes`, at the end of each stage and on SIGTERM or
SIGINT (saved after the current step, then `run` returns `preempted`; a signal during the export or
the final evaluation stops the run there, the checkpoints being complete). Steps count both stages:
1..S are warm-start steps, S+1.. are GRPO rollouts, so a checkpoint's step says which state it
holds. Randomness: step k uses `fold_in(key, k)`, so a resumed run draws what the uninterrupted one
would have. Resuming uses the latest step (or `resume_step`); a latest step that cannot be read is
reported, set aside (`<step>.unreadable`) and the run resumes from the one before it; steps after a
chosen `resume_step` are set aside as `<step>.superseded`. The logs are cut back to the resumed
step, so every step appears once. `output_dir` may be local or `gs://...` (`jaxbiqa.paths`).

Skips, named apart in train_log.jsonl: an update with a non-finite loss or gradient is skipped
(`skipped_update` 1 at that step, `skipped_updates` the total), and a run of them stops the run with
an error (`train.max_consecutive_skipped_updates`); bad records skipped under
`data.on_bad_record="skip"` are counted in each step's record (`skipped_records` so far in its
`epoch` of the data, this process's share), and the evaluation's in its metrics.json.

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
* Device work takes the global batch: GRPO's update rows are built on device from the rollout's
  own (global) arrays, other update entries become global arrays split over the mesh's batch axes
  (`distributed.Placement`, `shard_batch`), the rollout's prompts go in as host arrays.
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

import contextlib
import dataclasses
import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxbiqa import distributed
from jaxbiqa.checkpoint import Checkpointer, PreemptionGuard, UnreadableCheckpoint, restore_target
from jaxbiqa.config import Config, ConfigError, TrainSection, UserError, check_master_weights, eval_settings, to_dict
from jaxbiqa.data.pipeline import Pass1Preprocess, batches_per_epoch, make_pipeline, per_shard, shard_options
from jaxbiqa.data.records import SkipReport
from jaxbiqa.distributed import Placement
from jaxbiqa.eval.evaluate import METRICS_FILE, PREDICTIONS_FILE, evaluate
from jaxbiqa.models.build import abstract_policy, build_policy, build_processor
from jaxbiqa.models.qwen2_5_vl import save_pretrained, trainable_filter
from jaxbiqa.paths import as_path, atomic_write, remove_leftovers
from jaxbiqa.rewards import build_reward, reward_specs
from jaxbiqa.rl import batches
from jaxbiqa.rl.grpo_step import GRPOStep
from jaxbiqa.rl.metrics_log import MetricsLogger
from jaxbiqa.rl.step import TrainState, UpdateStep, grpo_loss
from jaxbiqa.rollout import Rollout
from jaxbiqa.sft.loss import sft_loss
from jaxbiqa.sft.warm_start import WarmStartStep
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules

log = logging.getLogger("jaxbiqa.train")

CONFIG_FILE = "config.json"
POLICY_DIR = "policy"
EVAL_DIR = "eval"
EVAL_COLUMNS = {"image": "overall_score", "caption": "caption_score", "caption_think": "reasoning_score"}
SUMMARY_FILE = "summary.json"
REFERENCE_ITEM = "reference"  # <checkpoints>/reference: the reference policy, when saved (module docstring)


class SkippedUpdatesError(UserError):
    """Training that makes no progress: every update skipped for a non-finite loss or gradient."""


@dataclasses.dataclass
class TrainResult:
    step: int                       # the last step done (both stages counted)
    preempted: bool                 # stopped by SIGTERM / SIGINT after saving; resume with `resume=True`
    eval: dict[str, dict] = dataclasses.field(default_factory=dict)  # "sft" / "final" -> evaluate() output
    policy_dir: str | None = None


@dataclasses.dataclass
class Stage:
    """A training stage as the loop runs it. Steps count both stages: the stage's steps are
    `begin + 1 .. end`; this run of it starts after step `start`."""

    name: str                       # "sft" / "grpo": the log's stage
    step: Callable[..., tuple]      # (state, data, step, key) -> (state, record, samples or None)
    iterator: Iterator              # the stage's data pipeline
    begin: int
    start: int
    end: int
    saved: Callable[[Any], Any]     # train state -> what a checkpoint holds
    tokens_metric: str              # the record's name of the update's tokens per second
    progress: Callable[[dict], dict]  # record -> the progress bar's figures


class Trainer:
    """One training run of `config` (see the module docstring); `run()` does it, resuming with `resume=True`.

    `train` overrides the config's `train` section; `mesh` places parameters and batches by
    `rules` (None: one device, one process); `from_runtime` takes both from `config.runtime`.
    """

    def __init__(self, config: Config, *, train: TrainSection | None = None, mesh: Mesh | None = None,
                 rules: LogicalRules = DEFAULT_RULES):
        check_master_weights(config)
        self.config = config
        self.train = train or config.train
        self.placement = Placement(mesh, rules)
        self.output_dir = as_path(config.output_dir)
        self.main_process = jax.process_index() == 0
        if jax.process_count() > 1:
            if mesh is None:
                raise ConfigError(f"a run on {jax.process_count()} processes needs a mesh over their devices "
                                 "(Trainer.from_runtime builds it from config.runtime)")
            shard = shard_options(config.data)
            if (shard.shard_index, shard.shard_count) != (jax.process_index(), jax.process_count()):
                raise ConfigError(f"data.shard_index / shard_count ({shard.shard_index}, {shard.shard_count}) must "
                                 "be left unset in a multi-process run: each process reads its own share")
            if not config.data.drop_remainder:
                raise ConfigError("data.drop_remainder=False runs on one process only: a short batch would leave "
                                 "some processes without rows")
        shards = shard_options(config.data).shard_count
        per_shard(config.data.global_batch_size, shards)
        if self.train.sft_batch_size:
            per_shard(self.train.sft_batch_size, shards, "train.sft_batch_size")
        self.sft_pass2 = self.train.sft_pass2 and config.rollout.two_pass  # a one-pass rollout has no pass 2
        if self.train.train_pass2 and not config.rollout.two_pass:
            raise ConfigError("train.train_pass2 needs rollout.two_pass")
        if self.train.train_pass2 and config.rollout.pass2.num_samples != 1:
            raise ConfigError("train.train_pass2 needs rollout.pass2.num_samples == 1 (one pass-2 row per sample)")
        self.processor = build_processor(config.model, config.data)
        self.tokenizer = self.processor.tokenizer
        self.preprocess = Pass1Preprocess(self.processor)
        self.reward_fn = build_reward(reward_specs(config.rewards))
        self.eos_ids = tuple(config.rollout.pass1.eos_token_ids)
        if not self.eos_ids:
            raise ConfigError("rollout.pass1.eos_token_ids is empty: the warm start needs an end-of-turn token")
        self.key = jax.random.key(config.seed)

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
                raise ConfigError("data.num_epochs is None (no end): set train.max_steps")
            return self.train.max_steps
        steps = batches_per_epoch(data) * data.num_epochs  # the same on any number of processes
        if steps < 1 and not self.train.max_steps:
            raise ConfigError(f"the train split has no batch of {data.global_batch_size} records of one image size "
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

    def _trainable(self, optim):
        return trainable_filter(lora=self.config.model.lora_rank > 0, freeze_vision=optim.freeze_vision)

    def _update(self, model, loss, optim, updates: int) -> UpdateStep:
        return UpdateStep(model, loss, optim, max(updates, 1), trainable=self._trainable(optim),
                         mesh=self.placement.mesh, rules=self.placement.rules,
                         logprob_chunk_size=self.config.grpo.logprob_chunk_size)

    # ------------------------------------------------------------------ run

    def run(self, resume: bool = False, resume_step: int | None = None) -> TrainResult:
        """The whole run; with `resume`, from the latest checkpoint (or `resume_step`)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.main_process:
            remove_leftovers(self.output_dir)
        checkpointer = Checkpointer.from_section(self.config.checkpoint, self.output_dir)
        try:
            start = self._resume_step(checkpointer, resume, resume_step)
            try:
                return self._run(checkpointer, start, resume)
            except UnreadableCheckpoint as error:
                earlier = [step for step in checkpointer.all_steps() if step < error.step]
                if error.step != start or not earlier:
                    raise
                log.warning("%s: set aside as %d.unreadable; resuming from step %d", error, error.step, earlier[-1])
                checkpointer.set_aside(error.step, "unreadable")
                return self._run(checkpointer, earlier[-1], resume)
        finally:
            checkpointer.close()

    def _resume_step(self, checkpointer: Checkpointer, resume: bool, resume_step: int | None) -> int:
        """The step the run starts after: 0 for a fresh run, else the latest (or `resume_step`)."""
        latest = checkpointer.latest_step()
        if not resume:
            if resume_step is not None:
                raise ValueError("resume_step needs resume=True (train --resume --resume-step N)")
            if latest is not None:
                raise FileExistsError(f"{checkpointer.directory} already holds checkpoints (latest step {latest}): "
                                      "resume with --resume, or choose another output_dir")
            return 0
        if resume_step is None:
            return latest or 0
        if resume_step not in checkpointer.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {resume_step} in {checkpointer.directory} "
                                    f"(have {checkpointer.all_steps()})")
        for later in [step for step in checkpointer.all_steps() if step > resume_step]:
            checkpointer.set_aside(later, "superseded")  # else the resumed run could not save these steps
            log.warning("resuming from step %d: set aside step %d as %d.superseded", resume_step, later, later)
        return resume_step

    def _run(self, checkpointer: Checkpointer, start: int, resume: bool) -> TrainResult:
        config, train = self.config, self.train
        self._check_saved_config(resume)
        sft_steps, total = config.sft.steps, self.total_steps()
        result = TrainResult(step=start, preempted=False)
        logger = MetricsLogger(self.output_dir, total_steps=total, initial_step=min(start, total),
                               tensorboard=train.tensorboard, progress=train.progress, enabled=self.main_process)
        guard = PreemptionGuard(enabled=config.checkpoint.save_on_preemption)
        try:
            with guard:
                # resuming: the structure is enough, the checkpoint has the values
                model = (abstract_policy(config.model, seed=config.seed) if start
                         else build_policy(config.model, seed=config.seed, mesh=self.placement.mesh,
                                           rules=self.placement.rules))
                self.plans = batches.VisionPlans(model.config.vision)
                self.rollout = Rollout.from_processor(config.rollout, self.processor, model.config.text.vocab_size)
                if sft_steps and start <= sft_steps:
                    model, result.step, result.preempted = self._warm_start(model, checkpointer, logger, guard, start)
                    if result.preempted:
                        return result
                    if train.eval_after_sft:
                        result.eval["sft"] = self._evaluate(model, logger, sft_steps, "sft", guard.should_stop)
                model, result.step, result.preempted = self._grpo(model, checkpointer, logger, guard, start)
                if result.preempted:
                    return result
                # a signal now, during the export or the evaluation ends the run there: the
                # checkpoints are complete and a resumed run does the rest
                self._check_signal(guard, "the export")
                result.policy_dir = self._export(model)
                if train.eval_at_end:
                    self._check_signal(guard, "the final evaluation")
                    result.eval["final"] = self._evaluate(model, logger, result.step, "final", guard.should_stop)
                self._write_summary(result)
        except InterruptedError as stop:
            log.warning("%s after step %d (%s); its checkpoint is complete: resume with --resume",
                        guard.received or "signal", result.step, stop)
            result.preempted = True
        finally:
            logger.close()
        return result

    @staticmethod
    def _check_signal(guard: PreemptionGuard, before: str) -> None:
        if guard.should_stop():
            raise InterruptedError(f"stopped before {before}")

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
            atomic_write(path, json.dumps(current, indent=2) + "\n")

    def _run_stage(self, stage: Stage, state: TrainState, checkpointer: Checkpointer, logger: MetricsLogger,
                   guard: PreemptionGuard) -> tuple[TrainState, int, bool]:
        """Steps `stage.start + 1 .. stage.end` (fewer when the data ends): each step's record and
        samples logged, checkpoints every `save_interval_steps`, at the stage's end and on SIGTERM.
        Returns the state, the last step done and whether SIGTERM stopped it. Step k draws with
        `fold_in(key, k)`, so a resumed run draws what the uninterrupted one would have."""
        config, train = self.config, self.train
        step, last = stage.start, time.perf_counter()

        def save() -> None:
            checkpointer.save(step, stage.saved(state), key=self.key, data_iterator=stage.iterator, config=config,
                              force=True)
            logger.sync()

        skipped_since = None  # the first step of the current run of skipped updates

        while step < stage.end:
            position = stage.iterator.get_state()
            data = self._next_batch(stage.iterator)
            if data is None:
                log.info("the %s data ended after step %d", stage.name, step)
                break
            try:
                state, record, samples = stage.step(state, data, step + 1, jax.random.fold_in(self.key, step + 1))
            except InterruptedError as stop:  # mid-step (e.g. mid-rollout): keep the last whole step
                stage.iterator.set_state(position)  # its batch is drawn again on resume
                if step:
                    save()
                checkpointer.wait()
                log.warning("%s: %s; saved step %d; resume with --resume", guard.received or "signal", stop, step)
                return state, step, True
            step += 1
            now = time.perf_counter()
            record["step_time"] = now - last
            record[stage.tokens_metric] = record.pop("_tokens") / max(now - last, 1e-9)
            last = now
            # bad records skipped so far in this epoch of the data (not updates: `skipped_update`)
            record |= {"epoch": stage.iterator.epoch, "skipped_records": stage.iterator.skipped_records}
            skipped_since = (skipped_since or step) if record.get("skipped_update", 0) > 0 else None
            if step % train.log_every == 0 or step == stage.end or skipped_since:
                logger.write(step, stage.name, record)
            self._check_skipped(stage, step, skipped_since, final=step == stage.end)
            done = step - stage.begin
            if samples and train.samples_every and (done == 1 or done % train.samples_every == 0):
                logger.samples(step, stage.name, samples)
            logger.advance(1, **stage.progress(record))
            stop = guard.should_stop()
            if checkpointer.due(step) or step == stage.end or stop:
                save()
            if stop:
                checkpointer.wait()
                log.warning("%s: saved step %d; resume with --resume", guard.received or "signal", step)
                return state, step, True
        self._check_skipped(stage, step, skipped_since, final=True)  # the data ended early
        if step > stage.start and step not in checkpointer.all_steps():
            save()
        return state, step, False

    def _check_skipped(self, stage: Stage, step: int, skipped_since: int | None, final: bool) -> None:
        """Stop a run whose updates keep being skipped (non-finite loss or gradient): after
        `train.max_consecutive_skipped_updates` in a row, or when the stage ends in a run of skipped
        updates at least half as long as the steps it took here (a short run that diverged)."""
        limit = self.train.max_consecutive_skipped_updates
        if skipped_since is None:
            return
        run = step - skipped_since + 1
        if (limit and run >= limit) or (final and 2 * run >= step - stage.start):
            raise SkippedUpdatesError(
                f"{stage.name}: the updates of steps {skipped_since}..{step} were all skipped (a non-finite loss or "
                f"gradient; the parameters are still those of step {skipped_since - 1}): lower the learning rate, or "
                f"check the data (train.max_consecutive_skipped_updates={limit} stops a run after that many)")

    # ------------------------------------------------------------------ stage 1: warm start

    def _warm_start(self, model, checkpointer: Checkpointer, logger: MetricsLogger, guard: PreemptionGuard,
                    start: int) -> tuple[nnx.Module, int, bool]:
        """Warm-start steps start+1..S; returns the model, the last step and whether SIGTERM stopped it."""
        section = self.config.sft
        loss = sft_loss(self.config.grpo.logprob_chunk_size)
        update = self._update(model, batches.two_pass_loss(loss) if self.sft_pass2 else loss, section.optim,
                              section.steps)
        # the warm start's data repeats: it does not end
        iterator = self._pipeline(self.train.sft_batch_size or self.config.data.global_batch_size, None)
        if start:
            restored = checkpointer.restore(restore_target(update.abstract_state(model)), step=start,
                                            data_iterator=iterator)
            state, self.key = restored.state, restored.key
            log.info("resumed the warm start at step %d", start)
        else:
            state = update.init(model)
        warm_start = WarmStartStep(self.config, model=model, rollout=self.rollout, update=update,
                                   placement=self.placement, plans=self.plans, encode=self._encode,
                                   render=self.processor.pass2_text, eos_ids=self.eos_ids, pass2=self.sft_pass2)

        def step(state, data, index, key):
            return (*warm_start(state, data, key), None)

        stage = Stage("sft", step, iterator, begin=0, start=start, end=section.steps, saved=lambda state: state,
                      tokens_metric="tokens_per_second", progress=lambda record: {"loss": record["loss"]})
        state, step, stopped = self._run_stage(stage, state, checkpointer, logger, guard)
        return update.model(state), step, stopped

    # ------------------------------------------------------------------ stage 2: GRPO

    def _grpo_update(self, model) -> UpdateStep:
        config = self.config
        loss = grpo_loss(config.grpo)
        if self.train.train_pass2:
            loss = batches.two_pass_loss(loss)
        return self._update(model, loss, config.optim, self.grpo_steps * config.grpo.num_iterations)

    def _grpo(self, model, checkpointer: Checkpointer, logger: MetricsLogger, guard: PreemptionGuard,
              start: int) -> tuple[nnx.Module, int, bool]:
        """GRPO rollouts after the warm start; returns the model, the last step and whether SIGTERM stopped it."""
        config, sft_steps = self.config, self.config.sft.steps
        update = self._grpo_update(model)
        iterator = self._pipeline(config.data.global_batch_size, config.data.num_epochs)
        resumed = start > sft_steps
        if resumed:
            restored = checkpointer.restore(restore_target({"train": update.abstract_state(model)}), step=start,
                                            data_iterator=iterator)
            state, self.key = restored.state["train"], restored.key
            log.info("resumed GRPO at step %d", start)
        else:
            state = update.init(model)
        reference = self._reference(update, state, checkpointer, resumed) if config.grpo.beta > 0 else None
        grpo_step = GRPOStep(config, rollout=self.rollout, reward_fn=self.reward_fn, update=update,
                             reference=reference, placement=self.placement, plans=self.plans, eos_ids=self.eos_ids,
                             train_pass2=self.train.train_pass2, samples_per_log=self.train.samples_per_log)
        stage = Stage("grpo", grpo_step, iterator, begin=sft_steps, start=max(start, sft_steps),
                      end=sft_steps + self.grpo_steps, saved=lambda state: {"train": state},
                      tokens_metric="train_tokens_per_second",
                      progress=lambda record: {"reward": record["reward/total_mean"], "kl": record.get("kl", 0.0)})
        try:
            state, step, stopped = self._run_stage(stage, state, checkpointer, logger, guard)
        finally:
            grpo_step.close()
        return update.model(state), step, stopped

    def _reference_from_model_path(self) -> bool:
        """Whether GRPO starts from `model.path`'s weights as loaded (no warm start): then the
        reference's non-adapter parameters are reloaded from there on resume, not stored."""
        return self.config.sft.steps == 0 and self.config.model.init == "pretrained"

    def _reference(self, update: UpdateStep, state: TrainState, checkpointer: Checkpointer,
                   resumed: bool) -> nnx.State:
        """The reference policy's trainable-shaped parameters: the policy as GRPO starts (the
        frozen part is `state.frozen`). LoRA adapters are zeros; any other trainable parameters are
        their values at the start of GRPO: `UpdateStep.reference_params` when it starts (saved once
        as `<checkpoints>/reference` unless `model.path` holds them), rebuilt from there on resume."""
        from_model = self._reference_from_model_path()
        if not resumed:
            reference = update.reference_params(state)
            _, rest = reference.split(nnx.LoRAParam, ...)
            if jax.tree.leaves(rest) and not from_model:  # full fine-tuning, or a trainable vision tower
                checkpointer.save_item(REFERENCE_ITEM, rest)
                log.info("saved the reference policy in %s", checkpointer.directory / REFERENCE_ITEM)
            return reference
        adapters, rest = state.params.split(nnx.LoRAParam, ...)
        if jax.tree.leaves(rest):
            if from_model:
                rest = self._initial_params(update, rest)
                log.info("reloaded the reference policy from model.path")
            elif checkpointer.has_item(REFERENCE_ITEM):
                rest = checkpointer.restore_item(REFERENCE_ITEM, restore_target(rest))
                log.info("restored the reference policy from %s", checkpointer.directory / REFERENCE_ITEM)
            else:
                raise FileNotFoundError(f"{checkpointer.directory / REFERENCE_ITEM} is missing: resuming GRPO with "
                                        "grpo.beta > 0 needs the reference policy saved there as GRPO started")
        return nnx.merge_state(jax.tree.map(jnp.zeros_like, adapters), rest)

    def _initial_params(self, update: UpdateStep, like: nnx.State) -> nnx.State:
        """The non-adapter trainable parameters of the policy as `build_policy` loads it, placed
        and structured like `like` (the same parameters of the train state)."""
        model = build_policy(self.config.model, seed=self.config.seed, mesh=self.placement.mesh,
                             rules=self.placement.rules)
        _, params, _ = nnx.split(model, update.trainable, ...)
        _, loaded = params.split(nnx.LoRAParam, ...)
        source, target = (jax.tree_util.tree_flatten_with_path(tree)[0] for tree in (loaded, like))
        if [(path, x.shape, x.dtype) for path, x in source] != [(path, x.shape, x.dtype) for path, x in target]:
            raise ValueError(f"the weights of model.path {self.config.model.path!r} do not match the train state")
        leaves = [jax.device_put(x, y.sharding) for (_, x), (_, y) in zip(source, target)]
        return jax.tree.unflatten(jax.tree.structure(like), leaves)

    # ------------------------------------------------------------------ end of run

    def _export(self, model) -> str:
        path = self.output_dir / POLICY_DIR
        save_pretrained(model, path, add_files=self.processor.save_pretrained)
        return str(path)

    def _evaluate(self, model, logger: MetricsLogger, step: int, name: str,
                  should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
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
        skipped = SkipReport()
        eval_batches = make_pipeline(data, "eval", preprocess=self.preprocess,
                                     on_epoch_end=lambda epoch, report: skipped.entries.extend(report.entries))
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.placement.scope())
            folder = (self.output_dir / EVAL_DIR / name if self.main_process
                      else stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxbiqa-eval-")))
            result = evaluate(model, self.processor, eval_batches, folder, rollout=config.rollout, settings=settings,
                              should_stop=should_stop, skipped=skipped)
        datasets = {dataset: {label: entry["columns"][column] for label, column in EVAL_COLUMNS.items()
                              if column in entry["columns"]} | {"gap": entry.get("gap")}
                    for dataset, entry in result.metrics["datasets"].items()}
        if not datasets:
            raise ValueError(f"evaluation '{name}': no eval record has a target MOS")
        out: dict[str, Any] = {"n": result.n, "metrics": str(self.output_dir / EVAL_DIR / name / METRICS_FILE),
                               "predictions": str(self.output_dir / EVAL_DIR / name / PREDICTIONS_FILE),
                               "eval_time": time.perf_counter() - start, "skipped_records": len(skipped),
                               "datasets": datasets,
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
            atomic_write(self.output_dir / SUMMARY_FILE, json.dumps(dataclasses.asdict(result), indent=2) + "\n")


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
