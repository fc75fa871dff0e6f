"""Pieces shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this module is
importable as `common`): the small random Qwen2.5-VL that jaxbiqa and transformers both run, and
the timing loop."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

GRID = (1, 16, 24)  # 384 patches -> 96 image tokens per image (non-square, windows of 4x4 merge units)


class SpecialTokens(NamedTuple):
    image: int
    vision_start: int
    vision_end: int
    pad: int


def special_tokens(vocab: int) -> SpecialTokens:
    """Ids of the special tokens, placed above the ids the benchmarks draw their random text from."""
    return SpecialTokens(vocab - 96, vocab - 95, vocab - 94, vocab - 93)


def torch_vl_model(vocab: int, seed: int = 0, *, layers: int = 4, width: int = 256, vision_width: int = 128
                   ) -> Qwen2_5_VLForConditionalGeneration:
    """A random float32 Qwen2.5-VL: `layers` decoder layers of `width` (head_dim 32 at the default,
    64 from width 384; GQA with 2 KV heads), a 4-block vision tower of `vision_width`."""
    ids = special_tokens(vocab)
    head_dim = 32 if width < 384 else 64
    quarter = head_dim // 8
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=width, intermediate_size=width * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=width // head_dim, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=None, eos_token_id=None, pad_token_id=ids.pad,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [quarter, (head_dim // 2 - quarter) // 2,
                                                            (head_dim // 2 - quarter) // 2]}),
        vision_config=dict(depth=4, hidden_size=vision_width, intermediate_size=2 * vision_width,
                           num_heads=vision_width // 32 if vision_width < 192 else vision_width // 64,
                           out_hidden_size=width, window_size=56, fullatt_block_indexes=[3]),
        image_token_id=ids.image, video_token_id=vocab - 1, vision_start_token_id=ids.vision_start,
        vision_end_token_id=ids.vision_end, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()


def median_seconds(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time of each function over `repeats` runs, after `warmup` untimed runs (compilation,
    first-call set-up). The functions take turns, so they share any background load alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, log in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            log.append(time.perf_counter() - start)
    return [statistics.median(log) for log in times]
