"""Configs: frozen dataclasses, loaded from Python files in `configs/`, with typed `--set` overrides.

Every section of the config is defined here, in one leaf module (no JAX, no other jaxbiqa module),
so anything can read a config without pulling in the layers that act on it.

A config file defines `get_config() -> Config`. Overrides are `dotted.key=value` strings; the
value is parsed for the field's declared type (int, float, bool, str, Literal, tuple, Optional,
dict entries), and an unknown key fails listing the valid keys with the closest one suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json
import math
import numbers
import traceback
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal


CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


class UserError(ValueError):
    """Input the user can fix (a file, record, setting or path), not a bug: the command line prints its
    message as one line and exits with status 2 (`jaxbiqa.cli`). Every error type of the library for
    bad input derives from it; it lives here because every layer may import this leaf module."""


class ConfigError(UserError):
    """A config file, key or value that cannot be used; the message says which and why."""


# ---------------------------------------------------------------- sections
# Every section is declared with `@section`: a frozen dataclass whose fields are checked against
# their declared types when it is built, in Python (a config file) as with `--set`, and whose
# numbers must be finite (NaN and inf are refused everywhere); its own `__post_init__` then checks
# ranges and combinations.


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _typed(value: Any, tp: Any, where: str) -> Any:
    """`value` if it is of type `tp` (a list for a tuple becomes a tuple, an integer for a float a
    float); a ConfigError naming `where` otherwise, and for any NaN or infinite number."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:  # e.g. a reward's keyword parameters: any JSON-like value, its numbers finite
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}={value}: must be a finite number")
        if isinstance(value, Mapping):
            for key, item in value.items():
                _typed(item, Any, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                _typed(item, Any, f"{where}[{i}]")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _typed(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}={value!r} is not {_type_name(tp)}")
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        raise ConfigError(f"{where}={value!r} is not one of {list(args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}={value}: must be a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (tuple, list)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin in (dict, Mapping):
        if isinstance(value, Mapping):
            key_t, val_t = args or (Any, Any)
            return {_typed(k, key_t, where): _typed(v, val_t, f"{where}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
    else:
        raise ConfigError(f"{where}: unsupported field type {tp}")
    raise ConfigError(f"{where}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}")


def _check_fields(self: Any) -> None:
    for field in dataclasses.fields(self):
        value = getattr(self, field.name)
        typed = _typed(value, _field_types(type(self))[field.name], f"{type(self).__name__}.{field.name}")
        if typed is not value:  # normalised (list -> tuple, int -> float): a frozen field is set once, here
            object.__setattr__(self, field.name, typed)


def section(cls: type) -> type:
    """A config section: a frozen dataclass whose field types (and finiteness) are checked when it is
    built, before its own `__post_init__` checks ranges."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        _check_fields(self)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True)(cls)


# ---------------------------------------------------------------- runtime
# The `runtime` section: devices, mesh, multi-process start-up, compilation cache; `jaxbiqa.distributed`
# acts on it.
#
# Mesh: `mesh` gives the axis sizes over the devices of one slice (or one host, or everything when
# `dcn_mesh` is empty); `dcn_mesh` gives how many slices (TPU) or processes (GPU / CPU hosts) each
# axis spans across the slower data-centre network. One size in each may be -1, "the rest". The
# device count of an axis is the product of both, e.g. mesh {"data": 1, "fsdp": -1, "tensor": 1}
# with dcn_mesh {"data": 4}: four slices, data-parallel across them, FSDP within each.
#
# Multi-process: with `distributed="auto"` the runtime is started when the environment says so:
# an explicit coordinator (these fields or JAXBIQA_COORDINATOR / JAXBIQA_NUM_PROCESSES /
# JAXBIQA_PROCESS_ID), a SLURM step of more than one task, or a TPU pod (TPU_WORKER_HOSTNAMES /
# MEGASCALE_COORDINATOR_ADDRESS set, or JAXBIQA_DISTRIBUTED=on as `launch/tpu_pod.sh` sets).


MESH_AXES = ("data", "fsdp", "tensor")  # the same names as jaxbiqa.sharding.MESH_AXES


def _check_shape(name: str, shape: dict[str, int], problems: list[str]) -> None:
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        problems.append(f"{name} axes {unknown} are not among {MESH_AXES}")
    sizes = list(shape.values())
    if any(s == 0 or s < -1 for s in sizes):
        problems.append(f"{name} sizes must be >= 1 or -1 (the rest), got {shape}")
    if sizes.count(-1) > 1:
        problems.append(f"{name} may have at most one -1 size, got {shape}")


@section
class RuntimeSection:
    # mesh axis sizes within a slice (ICI) and across slices / hosts (DCN); see the comment above
    mesh: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": 1, "fsdp": -1, "tensor": 1})
    dcn_mesh: dict[str, int] = dataclasses.field(default_factory=dict)  # empty: one slice / no DCN axis
    # logical axis -> mesh axes, overriding jaxbiqa.sharding.DEFAULT_RULES: "fsdp", "data,fsdp",
    # or "" for replicated; e.g. --set runtime.rules.mlp=
    rules: dict[str, str] = dataclasses.field(default_factory=dict)

    # multi-process start-up (jax.distributed.initialize)
    distributed: Literal["auto", "on", "off"] = "auto"  # on: always (JAX detects the cluster); off: never
    coordinator_address: str = ""      # host:port of process 0; "" = JAXBIQA_COORDINATOR or auto-detection
    num_processes: int = 0             # 0 = JAXBIQA_NUM_PROCESSES or auto-detection
    process_id: int = -1               # -1 = JAXBIQA_PROCESS_ID or auto-detection
    initialization_timeout: int = 300  # seconds to wait for every process to join
    cpu_collectives: Literal["gloo", "mpi"] = "gloo"  # cross-process collectives of CPU devices

    # persistent XLA compilation cache (a local folder or gs://...); "" = off, or JAX_COMPILATION_CACHE_DIR
    compilation_cache_dir: str = ""
    compilation_cache_min_compile_secs: float = 1.0  # cache only programs that took this long to compile
    compilation_cache_min_entry_bytes: int = 0       # and whose executable is at least this big

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_shape("runtime.mesh", self.mesh, problems)
        _check_shape("runtime.dcn_mesh", self.dcn_mesh, problems)
        unknown = sorted({a for v in self.rules.values() for a in v.split(",") if a.strip()} - set(MESH_AXES))
        if unknown:
            problems.append(f"runtime.rules name mesh axes {unknown} not among {MESH_AXES}")
        if self.num_processes < 0 or self.process_id < -1:
            problems.append(f"runtime.num_processes must be >= 0 and process_id >= -1, got "
                            f"{self.num_processes}, {self.process_id}")
        if self.num_processes and self.process_id >= self.num_processes:
            problems.append(f"runtime.process_id {self.process_id} must be < num_processes {self.num_processes}")
        if self.initialization_timeout < 1:
            problems.append(f"runtime.initialization_timeout must be >= 1 s, got {self.initialization_timeout}")
        if self.compilation_cache_min_compile_secs < 0 or self.compilation_cache_min_entry_bytes < 0:
            problems.append("runtime.compilation_cache_min_compile_secs and _min_entry_bytes must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


# ---------------------------------------------------------------- data
# The `data` section: every option of the data layer.
#
# Dataset specs (`train`, `eval`) are strings, one per dataset, mixed freely:
# * `KIND:PATH`: a reader of `jaxbiqa.data.sources` (koniq, spaq, kadid, live_challenge, agiqa3k,
#   csiq, pipal, qreasoning, meta_json, conversations, jsonl) on a dataset root or file in its
#   original layout; `image_root` applies to the JSON forms that name images by file name;
# * `tfds:DIR`: a dataset written by `jaxbiqa data build` (TFDS ArrayRecord, images inside);
# * `synthetic:DIR`: the embedded default set written by `jaxbiqa data synth` (its index.jsonl);
#   generated there with the `synthetic_*` options when DIR has none yet.
# Records are then filtered to `train_split` / `eval_split` (an empty value keeps every split).


MAX_PIXELS_LIMIT = 16_384 * 28 * 28  # 12.8 Mpx: the Qwen2.5-VL processor's own largest budget


@section
class DataSection:
    train: tuple[str, ...] = ("synthetic:data/synthetic",)
    eval: tuple[str, ...] = ("synthetic:data/synthetic",)
    train_split: str = "train"
    eval_split: str = "test"
    image_root: str = ""               # folder of the images for Q-Reasoning / meta / conversation files
    split_file: str = ""               # a user split file applied to every `KIND:PATH` spec that takes one
    mos_scale: Literal["table", "data"] = "table"   # records.MOS_SCALES, or min/max of the data
    require_mos: bool = True           # a record without a MOS is a bad record (off for text-only eval)

    # images keep their aspect ratio: each is resized as Qwen2.5-VL's processor does (sides
    # multiples of 28 px, about min..max pixels; images.resized_size) and every batch holds images
    # of one size (pipeline.BatchPlan), e.g. KonIQ 512x384 -> 504x392 (252 tokens), 512x512 -> 448x448
    max_pixels: int = 200_704          # 256 x 28 x 28: at most 256 visual tokens (at most MAX_PIXELS_LIMIT)
    min_pixels: int = 3_136            # 56 x 56, the Qwen2.5-VL processor's default
    # decompression-bomb limit: an image file whose header promises more pixels is a bad record,
    # refused before decoding (Pillow's own default hard limit; raise it for trusted large files)
    max_image_pixels: int = 178_956_970
    prompts: str = "humaniqa"          # the prompt set of both passes, by name (`jaxbiqa.prompts.PROMPT_SETS`)

    # iteration
    global_batch_size: int = 8         # records per step over all processes (each reads its 1/P share)
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = 1         # None repeats forever (each epoch reshuffled)
    drop_remainder: bool = True        # drop each image size's last, partial batch (else keep it short)
    num_workers: int = 0               # grain worker processes; 0 decodes in this process
    worker_buffer_size: int = 2
    read_threads: int = 8
    prefetch_buffer_size: int = 64
    shard_index: int = -1              # -1: this JAX process (ShardByJaxProcess)
    shard_count: int = 0               # 0: the number of JAX processes
    on_bad_record: Literal["raise", "skip"] = "raise"

    # the embedded synthetic set, generated into a `synthetic:DIR` spec's empty folder
    # (the same as `jaxbiqa data synth --out DIR` with these options)
    synthetic_seed: int = 0
    synthetic_num_photos: int = 0      # 0: all of synthetic.PHOTOS
    synthetic_crop_size: int = 96
    synthetic_crops_per_photo: int = 3
    synthetic_types_per_crop: int = 2
    synthetic_seen_crops_per_photo: int = 0  # new crops of the training photos: the `seen` split

    def __post_init__(self) -> None:
        problems = []
        if self.global_batch_size < 1:
            problems.append(f"global_batch_size={self.global_batch_size} must be >= 1")
        if self.num_workers < 0 or self.read_threads < 1:
            problems.append(f"num_workers={self.num_workers} must be >= 0 and read_threads={self.read_threads} >= 1")
        if not 0 < self.min_pixels <= self.max_pixels <= MAX_PIXELS_LIMIT:
            problems.append(f"need 0 < min_pixels <= max_pixels <= {MAX_PIXELS_LIMIT} (16384 visual tokens, "
                            f"Qwen2.5-VL's largest), got {self.min_pixels}, {self.max_pixels}")
        if self.max_image_pixels < 1:
            problems.append(f"max_image_pixels={self.max_image_pixels} must be >= 1")
        synthetic = [self.synthetic_num_photos, self.synthetic_seen_crops_per_photo, self.shard_count,
                     self.worker_buffer_size, self.prefetch_buffer_size]
        if any(n < 0 for n in synthetic) or min(self.synthetic_crop_size, self.synthetic_crops_per_photo,
                                                 self.synthetic_types_per_crop) < 1:
            problems.append("synthetic_num_photos, synthetic_seen_crops_per_photo, shard_count and the buffer sizes "
                            "must be >= 0; synthetic_crop_size, _crops_per_photo and _types_per_crop >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            problems.append(f"num_epochs={self.num_epochs} must be >= 1 (or None for no end)")
        if problems:
            raise ValueError("data section: " + "; ".join(problems))


# ---------------------------------------------------------------- rollout
# Options of the rollout engine: one pass's sampling, and the two-pass rollout.
#
# Every field is static for the compiled sampler: changing one compiles a new program, so a run
# keeps them fixed. `SamplingSection` is one pass (also what `jaxbiqa.rollout.generate` builds from
# transformers-style arguments); `RolloutSection` is the method's rollout: pass 1 with the image
# (G samples per prompt), then pass 2 from each pass-1 caption alone.


QWEN_IM_END, QWEN_ENDOFTEXT = 151645, 151643


@section
class SamplingSection:
    max_new_tokens: int = 1024
    num_samples: int = 1  # G: completions per prompt, all decoded from one shared prefill
    greedy: bool = False  # argmax decoding (temperature / top_k / top_p are then ignored)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    # a row stops once its text contains one of these (matched on device, whatever the tokenization)
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = (QWEN_IM_END, QWEN_ENDOFTEXT)
    pad_token_id: int = QWEN_ENDOFTEXT  # fills the token buffer after a row's end
    # prompt lengths are padded up to the smallest bucket that fits; () pads to the batch's longest
    prompt_buckets: tuple[int, ...] = ()
    cache_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # "auto": the model's compute dtype
    # every this many decode steps the loop asks the host whether a pre-emption was signalled
    # (`jaxbiqa.interrupts`) and ends early if so; 0: never (no host callback in the loop)
    stop_poll_steps: int = 32

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.num_samples < 1:
            problems.append(f"num_samples={self.num_samples} must be >= 1")
        if not self.greedy and not self.temperature > 0:
            problems.append(f"temperature={self.temperature} must be > 0 (use greedy=True for argmax)")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 is off)")
        if self.stop_poll_steps < 0:
            problems.append(f"stop_poll_steps={self.stop_poll_steps} must be >= 0 (0 is off)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if any(not s for s in self.stop_strings):
            problems.append("stop_strings must not contain an empty string")
        if list(self.prompt_buckets) != sorted(set(self.prompt_buckets)) or any(b < 1 for b in self.prompt_buckets):
            problems.append(f"prompt_buckets={self.prompt_buckets} must be positive and strictly increasing")
        if problems:
            raise ValueError("SamplingSection: " + "; ".join(problems))

    def replace(self, **changes) -> "SamplingSection":
        return dataclasses.replace(self, **changes)


@section
class RolloutSection:
    """The method's rollout (method.md section 4): pass 1 on image + prompt, pass 2 on the caption."""

    pass1: SamplingSection = SamplingSection(num_samples=4, stop_strings=("</answer>",),
                                           prompt_buckets=(320, 384, 512, 768, 1024))
    # pass 2's prompts are spliced on device to the static width of the caption budget; its
    # prompt_buckets are smaller prefill widths, the smallest that holds a batch's longest prompt is
    # prefilled (one compiled program holds them all)
    pass2: SamplingSection = SamplingSection(num_samples=1, stop_strings=("</answer>",))
    two_pass: bool = True
    # pass 2 sees the pass-1 text before the first <think> (caption only, the method) or <answer>
    # (caption + think, method.md 8.3); the rule of `jaxbiqa.rewards.split_caption`
    caption_until: Literal["think", "answer"] = "think"
    # the caption budget: longest caption (in tokens) pass 2 accepts, longer ones are flagged like a
    # missing caption; it sets pass 2's prompt width (budget + template) and cache.
    # 0: pass1.max_new_tokens (+ the few tokens a split token can add), i.e. never in practice
    max_caption_tokens: int = 0
    # the policy the training rollout decodes with (`jaxbiqa.rollout.policy_copy`): a copy in the
    # compute dtype made after each update, sharded as the update ("training"), over the tensor
    # axis only ("tensor") or whole on every device ("replicated")
    policy_layout: Literal["training", "tensor", "replicated"] = "training"

    def __post_init__(self):
        if self.max_caption_tokens < 0:
            raise ValueError(f"RolloutSection.max_caption_tokens={self.max_caption_tokens} must be >= 0")


# ---------------------------------------------------------------- grpo, optim, sft, checkpoint
# Sections of the update: GRPO loss, optimizer, supervised warm start, checkpoints. Defaults are the
# authors' trainer (method.md section 5) unless a field says otherwise.


Advantage = Literal["grpo", "drgrpo", "rloo"]
KLEstimator = Literal["k1", "k2", "k3"]
Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_sum"]
Schedule = Literal["linear", "constant", "cosine"]


@section
class GRPOSection:
    """The GRPO objective. Alternatives from method.md section 6: Dr.GRPO (`advantage="drgrpo"`,
    `aggregation="seq_sum"`), DAPO (`aggregation="token_mean"`, `clip_epsilon_high=0.28`), RLOO.

    The group size G is `rollout.pass1.num_samples` and Dr.GRPO's fixed length the completion
    width `rollout.pass1.max_new_tokens`: each is set once, where the rollout needs it.
    """

    advantage: Advantage = "grpo"       # grpo: (R - mean) / (std + eps); drgrpo: R - mean; rloo: leave-one-out
    advantage_epsilon: float = 1e-4     # added to the unbiased group std (grpo only)
    clip_epsilon: float = 0.2           # ratio clipped to [1 - eps, 1 + eps_high]
    clip_epsilon_high: float | None = None  # None: same as clip_epsilon; DAPO clip-higher uses 0.28
    beta: float = 1e-3                  # KL weight; 0 skips the reference model entirely
    kl_estimator: KLEstimator = "k3"    # k1: log r; k2: (log r)^2 / 2; k3: exp(-log r) + log r - 1 (r = pi / ref)
    aggregation: Aggregation = "seq_mean_token_mean"
    num_iterations: int = 1             # updates per rollout; > 1 stores the old log-probs before the first
    logprob_chunk_size: int = 256       # sequence chunk of the vocabulary projection (memory vs speed)

    def __post_init__(self):
        if self.clip_epsilon <= 0 or (self.clip_epsilon_high is not None and self.clip_epsilon_high <= 0):
            raise ValueError(f"grpo.clip_epsilon / clip_epsilon_high must be > 0, got "
                             f"{self.clip_epsilon} / {self.clip_epsilon_high}")
        if self.beta < 0 or self.advantage_epsilon < 0:
            raise ValueError(f"grpo.beta and grpo.advantage_epsilon must be >= 0, "
                             f"got {self.beta}, {self.advantage_epsilon}")
        if self.num_iterations < 1 or self.logprob_chunk_size < 1:
            raise ValueError("grpo.num_iterations and logprob_chunk_size must be >= 1")


@section
class OptimSection:
    """AdamW behind a global-norm clip, with a learning-rate schedule and gradient accumulation."""

    learning_rate: float = 1e-6
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0   # None: no clipping
    schedule: Schedule = "linear"       # linear decay to end_learning_rate over the run (the authors)
    warmup_steps: int = 0               # linear warm-up from 0 before the schedule
    end_learning_rate: float = 0.0
    micro_batch_size: int = 0           # rows per gradient-accumulation micro-batch; 0 = the whole batch
    freeze_vision: bool = True          # the vision tower gets no gradient (its features can be precomputed)

    def __post_init__(self):
        if self.learning_rate < 0 or self.end_learning_rate < 0 or self.weight_decay < 0:
            raise ValueError("optim.learning_rate, end_learning_rate and weight_decay must be >= 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1) or self.eps < 0:
            raise ValueError(f"optim.b1 / b2 must be in [0, 1) and eps >= 0, got {self.b1}, {self.b2}, {self.eps}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.warmup_steps < 0 or self.micro_batch_size < 0:
            raise ValueError("optim.warmup_steps and optim.micro_batch_size must be >= 0")


@section
class SFTSection:
    """Supervised warm start on reference completions (the demo's start for a random model)."""

    steps: int = 200                    # 0 skips the warm start
    optim: OptimSection = OptimSection(learning_rate=1e-3, schedule="constant", warmup_steps=10,
                                       freeze_vision=False)

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"sft.steps must be >= 0, got {self.steps}")


@section
class CheckpointSection:
    directory: str = ""                 # "" = <output_dir>/checkpoints
    save_interval_steps: int = 100
    # also save once this many minutes have passed since the last save (0 = steps only): bounds the
    # work a pre-emption can take when steps are long
    save_interval_minutes: float = 0.0
    max_to_keep: int | None = 3         # None keeps every checkpoint
    async_save: bool = True
    # SIGTERM / SIGINT: save at the end of the current step, then exit cleanly (a second SIGINT
    # exits at once); False leaves both signals their default (the process dies unsaved)
    save_on_preemption: bool = True

    def __post_init__(self):
        if self.save_interval_steps < 1 or (self.max_to_keep is not None and self.max_to_keep < 1):
            raise ValueError("checkpoint.save_interval_steps and checkpoint.max_to_keep must be >= 1")
        if not (self.save_interval_minutes >= 0 and math.isfinite(self.save_interval_minutes)):
            raise ValueError(f"checkpoint.save_interval_minutes must be a finite number >= 0, "
                             f"got {self.save_interval_minutes}")


# ---------------------------------------------------------------- train
# Options of the training loop (`jaxbiqa.rl.trainer`): run length, the two passes' roles, logging
# and the final evaluation.


@section
class TrainSection:
    # run length: GRPO steps (one rollout each) are the train split's batches x data.num_epochs,
    # capped at max_steps when it is > 0 (required when data.num_epochs is None)
    max_steps: int = 0
    sft_batch_size: int = 0          # records per warm-start step over all processes; 0 = data.global_batch_size
    # with a two-pass rollout, the warm start also teaches pass 2 (caption-only prompt -> the
    # reference's think + answer): a model trained from scratch cannot do pass 2 otherwise
    sft_pass2: bool = True
    # GRPO: also train the pass-2 completions, each with its pass-1 sample's advantage
    # (the paper does not: pass 2 only produces the self-consistency reward)
    train_pass2: bool = False

    # logging (JSON lines every step; TensorBoard when tensorboardX is installed)
    log_every: int = 1               # steps between JSON-lines / TensorBoard records
    samples_every: int = 25          # steps between sample completions written to samples.log (0: never)
    samples_per_log: int = 2         # prompts shown each time (all G samples of each)
    tensorboard: bool = True
    progress: bool = True            # a tqdm progress bar with ETA on stderr

    # an update with a non-finite loss or gradient is skipped (parameters unchanged, counted as
    # `skipped_updates` in train_log.jsonl); the run stops with an error after this many skipped in a
    # row, and when a stage ends in a run of skipped updates at least half its steps (0: only then)
    max_consecutive_skipped_updates: int = 10

    # evaluation (`config.eval` on data.eval / data.eval_split) at the end, and after the warm start
    eval_at_end: bool = True
    eval_after_sft: bool = True

    def __post_init__(self):
        for name in ("max_steps", "sft_batch_size", "samples_every", "samples_per_log",
                     "max_consecutive_skipped_updates"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")


# ---------------------------------------------------------------- eval
# How a policy is evaluated: `jaxbiqa eval` / `score` (their flags override it), the trainer's
# evaluation hook and the demo. The defaults are the authors' protocol (method.md section 7).

INVALID_SENTINEL = -1.0  # the authors' value for an unparsable rating (`eval.on_invalid="fill"`)
OnInvalid = Literal["drop", "fill"]


@section
class EvalSection:
    decoding: Literal["sampled", "greedy"] = "sampled"  # sampled: temperature / top_k / top_p below
    seed: int = 42                    # batch b draws with fold_in(key(seed), b)
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.95
    batch_size: int = 0               # records per compiled batch over all processes; 0: data.global_batch_size
    max_examples: int = 0             # 0: every record
    two_pass: bool = True             # also the caption-conditioned ratings (needs rollout.two_pass)
    strict_parse: bool = False        # the authors' rating regex instead of the tolerant parser
    lower_is_better: tuple[str, ...] = ()  # DMOS datasets besides those named like "csiq"
    on_invalid: OnInvalid = "drop"    # unparsable ratings: dropped, or set to fill_value (the authors)
    fill_value: float = INVALID_SENTINEL
    progress: bool = False            # a progress bar

    def __post_init__(self):
        if self.decoding == "sampled" and not self.temperature > 0:
            raise ValueError(f"eval.temperature must be > 0 for sampled decoding, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"eval.top_k must be >= 0 and eval.top_p in (0, 1], got {self.top_k}, {self.top_p}")
        if self.batch_size < 0 or self.max_examples < 0:
            raise ValueError(f"eval.batch_size and eval.max_examples must be >= 0, got {self.batch_size}, "
                             f"{self.max_examples}")

    def sampling(self, config: SamplingSection) -> SamplingSection:
        """One pass's sampling for evaluation: one sample per prompt, this decoding."""
        if self.decoding == "greedy":
            return config.replace(num_samples=1, greedy=True)
        return config.replace(num_samples=1, greedy=False, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)


# ---------------------------------------------------------------- the whole config


@section
class ModelSection:
    """The policy: where its weights come from and how it runs."""

    # a Hugging Face checkpoint folder (config.json + safetensors); with init="random", a folder or a
    # config.json file whose architecture is initialised randomly (weights there are not read)
    path: str = ""
    # "pretrained": model.path must hold safetensors weights (a folder without them is an error);
    # "random": a random initialisation, an explicit choice (the demo's `demo:FOLDER` model sets it)
    init: Literal["pretrained", "random"] = "pretrained"
    tokenizer: str = ""  # a tokenizer folder; "" means the one in `path`
    # Mixed precision as DeepSpeed's --bf16 (the authors' runs) does it: float32 master weights and
    # AdamW moments (`param_dtype`), each matmul in the compute `dtype` (the parameters are cast per
    # use inside the jitted step), logits, softmax, log-probs and the loss in float32. A bfloat16
    # parameter cannot take a 1e-6 update (its spacing near 0.02 is 1.2e-4, near 1.0 7.8e-3), so
    # trainable bfloat16 parameters are refused unless `allow_bf16_master_weights` says otherwise.
    # A frozen base (LoRA, a frozen vision tower) may be bfloat16: it only ever gets cast.
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # compute dtype
    # train bfloat16 parameters anyway (e.g. with stochastic rounding added to the optimizer)
    allow_bf16_master_weights: bool = False
    remat: bool = True
    scan_layers: bool = True
    # decoder attention: "blocked" reads only the filled part of the KV cache, in blocks of
    # `attention_block` slots with an online softmax, and a prefill attends over its own keys only;
    # "dense" is one masked softmax over every cache slot (the reference the tests compare with)
    attention: Literal["dense", "blocked"] = "blocked"
    attention_block: int = 64
    lora_rank: int = 0  # 0: full fine-tuning; the method's LoRA option is rank 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dtype: Literal["float32", "bfloat16"] = "float32"  # the adapters' own (master) dtype

    def __post_init__(self):
        if self.lora_rank < 0 or not self.lora_alpha > 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"model.lora_rank must be >= 0, lora_alpha > 0 and lora_dropout in [0, 1), got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")


@section
class RewardsSection:
    """Reward terms by registered name (`jaxbiqa.rewards.REWARDS`): weights and factory parameters.

    The defaults are the paper (method.md section 4): score + self-consistency + reasoning, equal
    weights; the working format reward is registered but off (weight 0), see method.md 8.1. Ratings
    are read with the authors' strict parse (method.md 8.7: the first `<answer>…</answer>` block,
    `"rating": x` inside it, no range check), so a completion cut before `</answer>` earns 0: with
    the format reward off, that is the method's only format pressure. The tolerant parser is one
    setting away: `--set rewards.params.score.strict=false` (and for self_consistency).
    """

    # reward name -> weight; a term with weight 0 is not computed
    weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"score": 1.0, "self_consistency": 1.0, "reasoning": 1.0, "format": 0.0})
    # reward name -> keyword parameters of its factory; e.g. --set rewards.params.score.threshold=0.3
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {
        "score": {"kind": "cosine", "threshold": 0.35, "strict": True, "valid_range": None},
        "self_consistency": {"kind": "cosine", "threshold": 0.35, "against": "target", "strict": True,
                             "valid_range": None},
        "reasoning": {"measure": "precision", "text": "completion", "floor": 0.1},
        "format": {"value": 0.5, "strict": True},
    })


@section
class Config:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs/default"
    runtime: RuntimeSection = RuntimeSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    rollout: RolloutSection = RolloutSection()
    rewards: RewardsSection = RewardsSection()
    grpo: GRPOSection = GRPOSection()
    optim: OptimSection = OptimSection()
    sft: SFTSection = SFTSection()
    checkpoint: CheckpointSection = CheckpointSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()

    def __post_init__(self):
        if self.rollout.pass1.num_samples < 2:
            raise ValueError(f"rollout.pass1.num_samples (G, GRPO's group) must be >= 2: a group needs a baseline, "
                             f"got {self.rollout.pass1.num_samples}")


def eval_settings(config: Config, **changes) -> EvalSection:
    """`config.eval` with `changes`, a batch size of 0 made `data.global_batch_size`."""
    section = dataclasses.replace(config.eval, **changes)
    return dataclasses.replace(section, batch_size=section.batch_size or config.data.global_batch_size)


def bf16_trained_parameters(config: Config) -> list[str]:
    """Which parameters a run of `config` trains while they are stored in bfloat16 (empty: none)."""
    model = config.model
    stages = [config.optim] + ([config.sft.optim] if config.sft.steps else [])
    found = []
    if model.lora_rank == 0 and model.param_dtype == "bfloat16":
        found.append("the decoder (full fine-tuning, model.param_dtype='bfloat16')")
    if model.lora_rank > 0 and model.lora_dtype == "bfloat16":
        found.append("the LoRA adapters (model.lora_dtype='bfloat16')")
    if model.param_dtype == "bfloat16" and any(not optim.freeze_vision for optim in stages):
        found.append("the vision tower (freeze_vision=false, model.param_dtype='bfloat16')")
    return found


def check_master_weights(config: Config) -> None:
    """Refuse trainable bfloat16 parameters: AdamW updates of ~lr are below their rounding step."""
    found = bf16_trained_parameters(config)
    if found and not config.model.allow_bf16_master_weights:
        raise ConfigError(
            f"{' and '.join(found)} would be trained in bfloat16: an update of lr={config.optim.learning_rate:g} "
            "rounds to nothing on bfloat16 weights (spacing 1.2e-4 near 0.02, 7.8e-3 near 1). Keep float32 master "
            "weights (model.param_dtype=float32, model.lora_dtype=float32; compute stays model.dtype=bfloat16), "
            "or set model.allow_bf16_master_weights=true if you add stochastic rounding yourself")


# ---------------------------------------------------------------- parsing values by declared type

def closest_key(key: str, valid: Sequence[str]) -> str:
    """An error message's tail: the closest valid key, then all of them."""
    match = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return f"{hint}; valid keys: {', '.join(sorted(valid))}"


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (a string from the command line, or a JSON-like value) to type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean (true/false)")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got a boolean")
        try:
            number = tp(value) if not isinstance(value, str) else tp(value.strip())
        except (TypeError, ValueError):
            try:  # "1e-6" for an int field, "3" for a float field
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {value!r} is not a {tp.__name__}") from None
        if tp is int:
            if float(number) != int(float(number)):
                raise ConfigError(f"{where}: {value!r} is not an integer")
            return int(float(number))
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        items = _as_sequence(value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(items)}")
        return tuple(coerce_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
    if origin in (list, Sequence):
        return tuple(coerce_value(v, args[0] if args else Any, f"{where}[{i}]")
                     for i, v in enumerate(_as_sequence(value, where)))
    if origin in (dict, Mapping) or tp is dict:
        mapping = json.loads(value) if isinstance(value, str) else value
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args or (str, Any)
        return {coerce_value(k, key_t, where): coerce_value(v, val_t, f"{where}.{k}") for k, v in mapping.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: a section cannot be set to {value!r}; set its keys instead")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _as_sequence(value: Any, where: str) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: {value!r} is not a JSON list ({err})") from None
        return [] if not text else [v.strip() for v in text.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{where}: expected a list, got {value!r}")


# ---------------------------------------------------------------- dicts and overrides

def from_dict(cls: type, data: Mapping[str, Any], where: str = "config", base: Any = None) -> Any:
    """`base` (default `cls()`) updated from a possibly partial nested mapping, keys and types validated.

    Keys a mapping leaves out keep the base's values, in nested sections too (so a partial
    `{"rollout": {"pass1": {...}}}` keeps the rollout section's own pass-1 defaults).
    """
    base = cls() if base is None else base
    hints = _field_types(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{closest_key(unknown[0], list(hints))}")
    values = {}
    for key, value in data.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            values[key] = from_dict(type(current), value, f"{where}.{key}", current)
        else:
            values[key] = coerce_value(value, hints[key], f"{where}.{key}")
    return _build(lambda: dataclasses.replace(base, **values), where)


def _build(make, where: str):
    """Construct a section; its own validation (`__post_init__`) becomes a ConfigError naming the key."""
    try:
        return make()
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready nested dict of a config (tuples become lists); standard JSON: a NaN or inf, which
    the sections refuse, would be an error here rather than a `NaN` token in config.json."""
    return json.loads(json.dumps(dataclasses.asdict(config), allow_nan=False))


def apply_override(config: Any, assignment: str) -> Any:
    """Return `config` with one `a.b.c=value` override applied."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    return _set(config, key.strip().split("."), raw, key.strip())


def _set(node: Any, path: list[str], raw: str, full_key: str) -> Any:
    head, rest = path[0], path[1:]
    if dataclasses.is_dataclass(node):
        hints = _field_types(type(node))
        if head not in hints:
            prefix = full_key[: len(full_key) - len(".".join(path))]
            raise ConfigError(f"unknown config key {full_key!r}{closest_key(prefix + head, [prefix + k for k in hints])}")
        current = getattr(node, head)
        if rest:
            if not (dataclasses.is_dataclass(current) or isinstance(current, Mapping)):
                raise ConfigError(f"config key {full_key!r}: {head!r} is a value, not a section")
            new = _set(current, rest, raw, full_key)
            if isinstance(current, Mapping):
                new = coerce_value(new, hints[head], full_key)
        else:
            new = coerce_value(raw, hints[head], full_key)
        return _build(lambda: dataclasses.replace(node, **{head: new}), full_key)
    if isinstance(node, Mapping):  # a dict field: set or add one entry; the value is parsed as JSON if it can be
        if rest:
            child = node.get(head, {})
            if not isinstance(child, Mapping):
                raise ConfigError(f"config key {full_key!r}: {head!r} is a value, not a mapping")
            return {**node, head: _set(child, rest, raw, full_key)}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        return {**node, head: value}
    raise ConfigError(f"config key {full_key!r}: cannot descend into a value")


# ---------------------------------------------------------------- config files

def resolve_config_path(name_or_path: str) -> Path:
    """A config file: a path (it has a folder part or ends in `.py`) must exist; a bare name is a recipe
    of the repository's `configs/`."""
    path = Path(name_or_path)
    known = sorted(p.stem for p in CONFIGS_DIR.glob("*.py")) if CONFIGS_DIR.is_dir() else []
    if path.suffix == ".py" or len(path.parts) > 1:
        if path.is_file():
            return path
        hint = f" (the recipe of that name is --config {path.stem})" if path.stem in known else ""
        raise ConfigError(f"config file {name_or_path} not found{hint}")
    candidate = CONFIGS_DIR / f"{name_or_path}.py"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"config {name_or_path!r} not found: neither a file nor a recipe in {CONFIGS_DIR} "
                      f"({', '.join(known) or 'none'})")


def _run_config_file(path: Path) -> Any:
    """`get_config()` of a config file; an error inside the file becomes a ConfigError naming its line."""
    spec = importlib.util.spec_from_file_location(f"jaxbiqa_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        config = get_config() if get_config is not None else None
    except SyntaxError as err:
        raise ConfigError(f"{path}:{err.lineno}: syntax error: {err.msg}") from err
    except Exception as err:  # whatever the file's own code raises, e.g. a bad value in Config(...)
        lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__)
                 if Path(frame.filename).resolve() == path.resolve()]
        where = f"{path}:{lines[-1]}" if lines else str(path)
        raise ConfigError(f"{where}: {type(err).__name__}: {err}") from err
    if get_config is None:
        raise ConfigError(f"{path}: a config file must define get_config() -> Config")
    return config


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a config file (or the defaults when None) and apply `key=value` overrides in order."""
    config = Config()
    if name_or_path:
        path = resolve_config_path(name_or_path)
        config = _run_config_file(path)
        if not isinstance(config, Config):
            raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not jaxbiqa.config.Config")
    for assignment in overrides:
        config = apply_override(config, assignment)
    check_master_weights(config)  # after every override: their order must not matter
    return config
