"""Rollout throughput of jaxbiqa's compiled sampler against transformers' `generate` (PyTorch, CPU).

Two modes. The default compares sampled rollouts at the real vocabulary (below). `--table`
prints the decode-step table of issue 17 on an 18.6M-parameter Qwen2.5-VL (8 decoder layers of
width 384, 4,096-token vocabulary, vision 4 x 192): greedy, one image per prompt, ms per decode
step against max_new_tokens and batch for jaxbiqa (`model.attention` blocked and dense),
transformers `generate` and the matmul-only floor (a bare jitted loop of the decoder's and the
head's matmuls for one token per row: no attention, no cache), all measured in the same run
(minimum of interleaved repeats); then the per-step time of 64 produced tokens at 128 vs 1024
cache slots, and prefill time per prompt bucket.

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
    .venv/bin/python benchmarks/rollout.py --table [--table-batches 8,32 --table-tokens 64,128,512,1024]
    .venv/bin/python benchmarks/rollout.py --mesh [--batch 8 --new-tokens 64]

`--mesh` times greedy decoding on 8 (simulated CPU) devices of the same 18.6M model held as the
update holds it (FSDP over all 8 on `embed`: every decode step gathers every layer) against the
rollout's copy of it (`rollout.policy_layout`: "replicated" and "tensor", made by
`jaxbiqa.rollout.policy_copy.PolicyCopy`): ms per decode step and the ratio, same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

if "--mesh" in sys.argv:  # before jax is imported: 8 CPU devices for the mesh comparison
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from common import GRID, median_seconds, special_tokens, torch_vl_model

from jaxbiqa.distributed import Placement
from jaxbiqa.models.qwen2_5_vl import from_pretrained
from jaxbiqa.rollout import PromptBatch, Sampler, SamplingSection
from jaxbiqa.rollout.policy_copy import PolicyCopy
from jaxbiqa.rollout.sampler import DecodeSpec, decode, prefill
from jaxbiqa.sharding import DEFAULT_RULES, make_mesh

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


def min_seconds(fns: dict, repeats: int) -> dict:
    """Minimum wall time of each function over `repeats` interleaved runs, after one warm-up run:
    the least disturbed run on a machine other processes share."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_floor(config, rows: int, steps: int) -> Callable[[], object]:
    """A bare jitted loop of `steps` one-token steps through the decoder's and the head's matmuls
    (embedding gather, q/k/v/o, gate/up/down per layer, head, argmax fed back): what a decode step
    costs without attention, cache, norms or sampling."""
    t = config.text
    e, q, kv, m = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim, \
        t.intermediate_size
    rng = np.random.default_rng(0)

    def w(*shape):
        return jnp.asarray(0.02 * rng.standard_normal(shape, np.float32))

    n = t.num_hidden_layers
    params = dict(embed=w(t.vocab_size, e), head=w(e, t.vocab_size),
                  layers=(w(n, e, q), w(n, e, kv), w(n, e, kv), w(n, q, e), w(n, e, m), w(n, e, m), w(n, m, e)))

    @jax.jit
    def run(params, token):
        def layer(x, p):
            wq, wk, wv, wo, wg, wu, wd = p
            h = x + (x @ wq + jnp.sum(x @ wk) + jnp.sum(x @ wv)) @ wo
            return h + (jax.nn.silu(h @ wg) * (h @ wu)) @ wd, None

        def step(_, token):
            x, _ = jax.lax.scan(layer, params["embed"][token], params["layers"])
            return jnp.argmax(x @ params["head"], axis=-1).astype(jnp.int32)

        return jax.lax.fori_loop(0, steps, step, token)

    token = jnp.zeros(rows, jnp.int32)
    return lambda: jax.block_until_ready(run(params, token))


def decode_table(args) -> None:
    """Issue 17's table: ms per decode step vs max_new_tokens and batch, with transformers and the floor."""
    vocab = 4096
    special = special_tokens(vocab)
    reference = torch_vl_model(vocab, layers=8, width=384, vision_width=192)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        models = {attention: from_pretrained(directory, scan_layers=True, attention=attention,
                                             attention_block=args.block)
                  for attention in ("blocked", "dense")}
    config = models["blocked"].config
    print(f"config: {sum(p.numel() for p in reference.parameters()) / 1e6:.1f}M parameters (text "
          f"{config.text.num_hidden_layers} x {config.text.hidden_size}, vocabulary {vocab}; vision "
          f"{config.vision.depth} x {config.vision.hidden_size}), greedy, one {GRID[1]}x{GRID[2]}-patch image per "
          f"prompt, attention block {args.block}; jax {jax.__version__} on {jax.devices()[0].platform}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); min of {args.repeats} interleaved repeats")
    tokens = sorted({2, *args.table_tokens})
    for b in args.table_batches:
        ids, mask, pixels, grids = prompts(b, vocab)
        torch_inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                            mm_token_type_ids=torch.tensor((ids == special.image).astype(np.int64)))
        fns = {}
        for n in tokens:
            def torch_generate(n=n):
                with torch.inference_mode():
                    reference.generate(**torch_inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                       pad_token_id=special.pad)
            fns["transformers", n] = torch_generate
            sampler = Sampler(SamplingSection(max_new_tokens=n, greedy=True, eos_token_ids=(), pad_token_id=special.pad))
            for attention, model in models.items():
                batch = sampler.prepare(model, ids, mask, pixels, grids)
                fns[attention, n] = lambda s=sampler, m=model, p=batch: jax.block_until_ready(
                    s(m, p, jax.random.key(0)).tokens)
            fns["floor", n] = matmul_floor(config, b, n - 2)
        best = min_seconds(fns, args.repeats)

        def step_ms(name, n):  # a decode step: the run's time beyond prefill + first token, per further token
            return 1e3 * (best[name, n] - (0 if name == "floor" else best[name, 2])) / (n - 2)

        print(f"\nbatch {b} ({ids.shape[1]}-token prompts): ms per decode step (whole run in s)")
        print("| new tokens | jaxbiqa blocked | jaxbiqa dense | transformers | floor | vs transformers | vs floor |")
        print("|---|---|---|---|---|---|---|")
        for n in tokens[1:]:
            blocked, dense, torch_ms, floor = (step_ms(name, n) for name in ("blocked", "dense", "transformers", "floor"))
            print(f"| {n} | {blocked:.2f} ({best['blocked', n]:.2f} s) | {dense:.2f} ({best['dense', n]:.2f} s) | "
                  f"{torch_ms:.2f} ({best['transformers', n]:.2f} s) | {floor:.2f} | "
                  f"{torch_ms / blocked:.2f}x per step, {best['transformers', n] / best['blocked', n]:.2f}x whole | "
                  f"{blocked / floor:.2f}x |")
    slots_and_buckets(models["blocked"], args, special.pad)


def mesh_table(args) -> None:
    """Decode on an 8-device mesh from the FSDP training layout vs the rollout's copy of the policy."""
    vocab = 4096
    special = special_tokens(vocab)
    reference = torch_vl_model(vocab, layers=8, width=384, vision_width=192)
    placement = Placement(make_mesh({"data": 1, "fsdp": 8, "tensor": 1}), DEFAULT_RULES)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        training = from_pretrained(directory, scan_layers=True, mesh=placement.mesh)  # fsdp-sharded, float32
    ids, mask, pixels, grids = prompts(args.batch, vocab)
    n = args.new_tokens
    samplers = {k: Sampler(SamplingSection(max_new_tokens=k, greedy=True, eos_token_ids=(), pad_token_id=special.pad))
                for k in (2, n)}
    policies = {"training layout (fsdp=8)": training}
    with placement.scope():
        for layout in ("tensor", "replicated"):
            policies[f"copy: {layout}"] = PolicyCopy(layout, "float32", placement.mesh, placement.rules)(training)
    fns = {}
    for name, policy in policies.items():
        for k, sampler in samplers.items():
            def run(s=sampler, m=policy):
                with placement.scope():
                    return jax.block_until_ready(s(m, s.prepare(m, ids, mask, pixels, grids), jax.random.key(0)).tokens)
            fns[name, k] = run
    best = min_seconds(fns, args.repeats)
    print(f"8 CPU devices, {args.batch} prompts x {n} new tokens, greedy, float32; min of {args.repeats} repeats")
    print("| policy | ms per decode step | vs training layout |")
    print("|---|---|---|")
    base = None
    for name in policies:
        ms = 1e3 * (best[name, n] - best[name, 2]) / (n - 2)
        base = base or ms
        print(f"| {name} | {ms:.2f} | {base / ms:.2f}x |")


def slots_and_buckets(model, args, pad: int) -> None:
    """Per-step time of 64 produced tokens with 128 vs 1024 cache slots; prefill time per prompt bucket."""
    rows, prompt, produced = args.table_batches[0], 64, 64
    rng = np.random.default_rng(1)

    def text_batch(width):
        ids = rng.integers(0, 3000, (rows, width)).astype(np.int32)
        mask = np.ones_like(ids)
        positions = np.broadcast_to(np.arange(width, dtype=np.int32)[None, None], (3, rows, width))
        return PromptBatch(ids, mask, positions, np.zeros(rows, np.int32))

    spec = DecodeSpec(produced, True, 1.0, 0, 1.0, (), pad)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, batch, slots):
        model = nnx.merge(graphdef, state)
        return decode(model, prefill(model, batch, slots.shape[0] - batch.length), jax.random.key(0), (),
                      spec)[0].tokens

    @jax.jit
    def prefill_only(state, batch, slots):
        return prefill(nnx.merge(graphdef, state), batch, slots.shape[0] - batch.length).logits

    batch = text_batch(prompt)
    fns = {}
    for slots in (prompt + produced, 1024):
        marker = jnp.zeros(slots)  # the cache capacity, as a static shape
        fns["decode", slots] = lambda m=marker: jax.block_until_ready(run(state, batch, m))
        fns["prefill", slots] = lambda m=marker: jax.block_until_ready(prefill_only(state, batch, m))
    buckets = (128, 256, 512, 1024)
    for width in buckets:
        wide = text_batch(width)
        fns["bucket", width] = lambda w=wide: jax.block_until_ready(prefill_only(state, w, jnp.zeros(w.length + 64)))
    best = min_seconds(fns, args.repeats)
    per_step = {slots: 1e3 * (best["decode", slots] - best["prefill", slots]) / produced
                for slots in (prompt + produced, 1024)}
    print(f"\n{produced} tokens after a {prompt}-token prompt, batch {rows}: {per_step[128]:.2f} ms per step with "
          f"128 cache slots, {per_step[1024]:.2f} ms with 1024 ({per_step[1024] / per_step[128]:.2f}x)")
    print(f"prefill, batch {rows}, text-only: " + ", ".join(f"{w} tokens {1e3 * best['bucket', w]:.1f} ms"
                                                            for w in buckets))


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
    parser.add_argument("--table", action="store_true", help="the decode-step table on the 18.6M model instead")
    parser.add_argument("--table-batches", type=lambda v: [int(x) for x in v.split(",")], default=[8, 32])
    parser.add_argument("--table-tokens", type=lambda v: [int(x) for x in v.split(",")], default=[64, 128, 512, 1024])
    parser.add_argument("--block", type=int, default=64, help="model.attention_block of the blocked path")
    parser.add_argument("--mesh", action="store_true",
                        help="decode from the FSDP training layout vs the rollout copy on 8 CPU devices instead")
    args = parser.parse_args()
    if args.table:
        decode_table(args)
        return
    if args.mesh:
        mesh_table(args)
        return
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
