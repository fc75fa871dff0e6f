"""Supervised warm start: cross-entropy on reference completions through the shared jitted step."""

from jaxbiqa.sft.loss import make_sft_step, pad_sequences, sft_batch, sft_loss

__all__ = ["make_sft_step", "pad_sequences", "sft_batch", "sft_loss"]
