"""jaxbiqa: explainable blind image quality assessment with a Qwen2.5-VL policy trained by GRPO."""

__version__ = "0.1.0"
