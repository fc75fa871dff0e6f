"""The PyTorch reference model of the parity tests (transformers' Qwen2.5-VL), shared by tests/models
and tests/rollout (pytest puts `tests/` on `sys.path` for its conftest). torch is imported lazily."""

from __future__ import annotations


def torch_reference(config, seed: int = 0, scale: float = 0.1):
    """`Qwen2_5_VLForConditionalGeneration` in float32 eval mode with eager attention.

    Weights are redrawn from N(0, scale^2) (norm scales from 1 + N(0, scale^2)) so that the
    activations are far from the near-uniform logits of the default 0.02 init and a wrong
    implementation shows up as a large difference.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(1.0 + noise if "norm" in name or "ln_q" in name else noise)
    return model
