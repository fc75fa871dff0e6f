"""Config sections of the update: GRPO loss, optimizer, supervised warm start, checkpoints.

Plain frozen dataclasses with no heavy imports, so the global config can hold them. Defaults are
the authors' trainer (method.md section 5) unless a field says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Advantage = Literal["grpo", "drgrpo", "rloo"]
KLEstimator = Literal["k1", "k2", "k3"]
Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_sum"]
Schedule = Literal["linear", "constant", "cosine"]


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    """The GRPO objective. Alternatives from method.md section 6: Dr.GRPO (`advantage="drgrpo"`,
    `aggregation="seq_sum"`), DAPO (`aggregation="token_mean"`, `clip_epsilon_high=0.28`), RLOO."""

    num_generations: int = 4            # G: samples per prompt; a group for the advantages
    advantage: Advantage = "grpo"       # grpo: (R - mean) / (std + eps); drgrpo: R - mean; rloo: leave-one-out
    advantage_epsilon: float = 1e-4     # added to the unbiased group std (grpo only)
    clip_epsilon: float = 0.2           # ratio clipped to [1 - eps, 1 + eps_high]
    clip_epsilon_high: float | None = None  # None: same as clip_epsilon; DAPO clip-higher uses 0.28
    beta: float = 1e-3                  # KL weight; 0 skips the reference model entirely
    kl_estimator: KLEstimator = "k3"    # k1: log r; k2: (log r)^2 / 2; k3: exp(-log r) + log r - 1 (r = pi / ref)
    aggregation: Aggregation = "seq_mean_token_mean"
    max_completion_length: int = 1024   # the fixed length of "seq_sum" (Dr.GRPO) and the sampler's budget
    num_iterations: int = 1             # updates per rollout; > 1 stores the old log-probs before the first
    logprob_chunk_size: int = 256       # sequence chunk of the vocabulary projection (memory vs speed)

    def __post_init__(self):
        if self.num_generations < 2:
            raise ValueError(f"grpo.num_generations must be >= 2 (a group needs a baseline), "
                             f"got {self.num_generations}")
        if self.clip_epsilon <= 0 or (self.clip_epsilon_high is not None and self.clip_epsilon_high <= 0):
            raise ValueError(f"grpo.clip_epsilon / clip_epsilon_high must be > 0, got "
                             f"{self.clip_epsilon} / {self.clip_epsilon_high}")
        if self.beta < 0 or self.advantage_epsilon < 0:
            raise ValueError(f"grpo.beta and grpo.advantage_epsilon must be >= 0, "
                             f"got {self.beta}, {self.advantage_epsilon}")
        if self.num_iterations < 1 or self.max_completion_length < 1 or self.logprob_chunk_size < 1:
            raise ValueError("grpo.num_iterations, max_completion_length and logprob_chunk_size must be >= 1")


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """Supervised warm start on reference completions (the demo's start for a random model)."""

    steps: int = 200                    # 0 skips the warm start
    optim: OptimSection = OptimSection(learning_rate=1e-3, schedule="constant", warmup_steps=10,
                                       freeze_vision=False)

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"sft.steps must be >= 0, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    directory: str = ""                 # "" = <output_dir>/checkpoints
    save_interval_steps: int = 100
    max_to_keep: int | None = 3         # None keeps every checkpoint
    async_save: bool = True
    save_on_preemption: bool = True     # SIGTERM: save at the end of the current step, then exit cleanly

    def __post_init__(self):
        if self.save_interval_steps < 1 or (self.max_to_keep is not None and self.max_to_keep < 1):
            raise ValueError("checkpoint.save_interval_steps and checkpoint.max_to_keep must be >= 1")
