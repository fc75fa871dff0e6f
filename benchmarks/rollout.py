"""Rollout throughput of jaxbiqa's compiled sampler against transformers' `generate` (PyTorch, CPU).

Both sample from the same small random Qwen2.5-VL (4 decoder layers of width 256 with the real
Qwen2.5-VL vocabulary of 151,936 tokens, 81.8M parameters: the PyTorch model's checkpoint, loaded
by `jaxbiqa.models.qwen2_5_vl.from_pretrained`): a batch of prompts of
different lengths, each with one image, G samples per prompt, a fixed number of new tokens (no
EOS, so both produce exactly batch * G * new_tokens tokens), temperature 1 and top-k 50.
transformers: `model.generate(..., do_sample=True, num_return_sequences=G)` under
`torch.inference_mode()` (it repeats each prompt and image G times before its prefill).
jaxbiqa: `Sampler` with `num_samples=G` (each image encoded and each prompt prefilled once, the
KV cache repeated for the G samples), timed after compilation. Also timed: jaxbiqa's prefill with
the shared-prefill expansion against prefilling the G-times repeated batch, and the whole
rollout both ways. Timings are medians of `--repeats` runs after a warm-up, the variants taking turns.

    .venv/bin/python benchmarks/rollout.py [--batch 8 --samples 4 --new-tokens 128 --repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np
import torch
from common import GRID, median_seconds, special_tokens, torch_vl_model

from jaxbiqa.models.qwen2_5_vl import from_pretrained
from jaxbiqa.rollout import Sampler, SamplingSection

TOP_K = 50


def prompts(batch: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`batch` left-padded prompts (10-70 text tokens around one image each), pixels and grids."""
    rng = np.random.default_rng(seed)
    special = special_tokens(vocab)
    image = [special.vision_start] + [special.image] * (int(np.prod(GRID)) // 4) + [special.vision_end]
    text = min(special) - 1  # text tokens are drawn below the special ids
    rows = [rng.integers(0, text, int(n)).tolist() + image + rng.integers(0, text, 10).tolist()
            for n in rng.integers(0, 60, batch)]
    width = max(map(len, rows))
    ids = np.full((batch, width), special.pad, np.int64)
    mask = np.zeros((batch, width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    grids = np.array([GRID] * batch)
    pixels = rng.standard_normal((int(grids.prod(-1).sum()), 3 * 2 * 14 * 14)).astype(np.float32)
    return ids, mask, pixels, grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="prompts, one image each")
    parser.add_argument("--samples", type=int, default=4, help="G, samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
    parser.add_argument("--vocab", type=int, default=151936,
                        help="vocabulary size (default: Qwen2.5-VL's, which every real run samples over); "
                             "transformers' sampling works on the whole vocabulary each step (top-k mask, softmax, "
                             "multinomial) where jaxbiqa draws among the k candidates, so the ratio grows with it")
    args = parser.parse_args()
    b, g, n = args.batch, args.samples, args.new_tokens
    special = special_tokens(args.vocab)

    reference = torch_vl_model(args.vocab)
    ids, mask, pixels, grids = prompts(b, args.vocab)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = from_pretrained(directory)
    params = sum(p.numel() for p in reference.parameters())
    tokens = b * g * n
    print(f"config: {params / 1e6:.1f}M parameters (vocabulary {args.vocab}), {b} prompts of {ids.shape[1]} tokens (padded) with a "
          f"{GRID[1]}x{GRID[2]}-patch image each, G={g}, {n} new tokens, top-k {TOP_K}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")

    torch_inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                        mm_token_type_ids=torch.tensor((ids == special.image).astype(np.int64)))

    def torch_generate():
        with torch.inference_mode():
            out = reference.generate(**torch_inputs, do_sample=True, top_k=TOP_K, num_return_sequences=g,
                                     max_new_tokens=n, pad_token_id=special.pad)
        assert out.shape == (b * g, ids.shape[1] + n)

    config = SamplingSection(max_new_tokens=n, num_samples=g, top_k=TOP_K, eos_token_ids=(), pad_token_id=special.pad)
    shared = Sampler(config)
    batch = shared.prepare(model, ids, mask, pixels, grids)
    repeated = Sampler(config.replace(num_samples=1))
    # the G-times repeated batch: rows b * G + i, each with its own copy of the image
    batch_g = repeated.prepare(model, np.repeat(ids, g, 0), np.repeat(mask, g, 0),
                               np.repeat(pixels.reshape(b, -1, pixels.shape[-1]), g, 0).reshape(-1, pixels.shape[-1]),
                               np.repeat(grids, g, 0))
    key = jax.random.key(0)

    def rollout(sampler, prompts):
        return lambda: jax.block_until_ready(sampler(model, prompts, key)).tokens

    def prefill(sampler, prompts):
        return lambda: jax.block_until_ready(sampler.prefill(model, prompts))

    t_torch, t_shared, t_repeated, p_shared, p_repeated = median_seconds(
        [torch_generate, rollout(shared, batch), rollout(repeated, batch_g), prefill(shared, batch),
         prefill(repeated, batch_g)], args.repeats)

    print(f"transformers generate (PyTorch CPU): {t_torch:8.3f} s  {tokens / t_torch:8.0f} tokens/s")
    print(f"jaxbiqa rollout (shared prefill):    {t_shared:8.3f} s  {tokens / t_shared:8.0f} tokens/s")
    print(f"jaxbiqa / transformers throughput:   {t_torch / t_shared:8.2f}x")
    print(f"prefill, G-times repeated batch:     {p_repeated:8.3f} s")
    print(f"prefill, shared (encode + prefill once, repeat cache): {p_shared:8.3f} s  "
          f"-> {p_repeated / p_shared:.2f}x less prefill time")
    print(f"whole rollout repeated vs shared:    {t_repeated:8.3f} s vs {t_shared:.3f} s "
          f"-> {t_repeated / t_shared:.2f}x")


if __name__ == "__main__":
    main()
