"""Supervised warm start: cross-entropy on reference completions through the shared jitted step."""

from jaxbiqa.sft.loss import sft_loss

__all__ = ["sft_loss"]
