"""GRPO: losses (`losses`), the jitted update (`step`) and their config sections (`options`).

Names are loaded on first use, so `from jaxbiqa.rl.options import GRPOSection` (the config's
import) does not pull in JAX.
"""

import importlib

_EXPORTS = {
    "losses": ("LossTerms", "aggregate", "clipped_surrogate", "completion_mask", "finish", "group_advantages",
               "grpo_objective", "kl_penalty", "masked_sum_count"),
    "options": ("CheckpointSection", "GRPOSection", "OptimSection", "SFTSection"),
    "step": ("TrainState", "TrainStep", "completion_logprobs", "grpo_loss", "make_optimizer", "make_schedule",
             "pack_batch"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxbiqa.rl' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxbiqa.rl.{_WHERE[name]}"), name)
