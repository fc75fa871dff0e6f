"""Supervised fine-tuning on reference completions: token cross-entropy with the prompt masked.

The batch is the GRPO step's layout (`jaxbiqa.rl.step.pack_batch`): left-padded prompt tokens then
right-padded completion tokens, `completion_mask [B, C]` on the reference completion (its closing
EOS included). The loss is the mean negative log-likelihood over every completion token of the
batch, computed with the chunked log-probs and run by the same jitted `UpdateStep` (micro-batch
accumulation, optimizer, non-finite guard) as GRPO.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxbiqa.rl.losses import LossTerms, masked_sum_count
from jaxbiqa.rl.step import Batch, LossFn, completion_logprobs


def sft_loss(chunk_size: int = 256) -> LossFn:
    """`LossFn` of token cross-entropy on the completion tokens (sum over tokens / token count)."""

    def loss(model: nnx.Module, batch: Batch, key: jax.Array | None) -> LossTerms:
        logp = completion_logprobs(model, batch, chunk_size=chunk_size, key=key)
        total, count = masked_sum_count(-logp, batch["completion_mask"])
        return LossTerms(total, count, {})

    return loss
