"""GRPO: the losses (`losses`) and the jitted update step (`step`); their config sections live in
`jaxbiqa.config` (GRPOSection, OptimSection, SFTSection, CheckpointSection)."""

from jaxbiqa.rl.losses import (
    LossTerms, aggregate, clipped_surrogate, completion_mask, finish, group_advantages, grpo_objective, kl_penalty,
    masked_sum_count)
from jaxbiqa.rl.step import (
    TrainState, UpdateStep, completion_logprobs, grpo_loss, make_optimizer, make_schedule, pack_batch)

__all__ = [
    "LossTerms", "TrainState", "UpdateStep", "aggregate", "clipped_surrogate", "completion_logprobs",
    "completion_mask", "finish", "group_advantages", "grpo_loss", "grpo_objective", "kl_penalty", "make_optimizer",
    "make_schedule", "masked_sum_count", "pack_batch",
]
