"""Forward-pass time of jaxbiqa's Qwen2.5-VL against transformers' PyTorch model, on CPU.

Both run the same small random config with the same weights (the PyTorch model's checkpoint,
loaded by `jaxbiqa.models.qwen2_5_vl.from_pretrained`) on the same batch: two left-padded prompts,
each with one image. Timed: transformers' `model(...)` under `torch.inference_mode()` (its default
attention) and jaxbiqa's `forward` (host-side rope index and vision plan + the jitted call), both
taking the same numpy inputs, plus jaxbiqa's jitted core alone with the inputs prepared once.
Each after warm-up (compilation excluded), the median of a few interleaved repetitions. Needs torch.

    .venv/bin/python benchmarks/forward.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np
import torch
from common import GRID, median_seconds, special_tokens, torch_vl_model
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import from_pretrained, prepare_inputs

VOCAB = 4096
IMAGE, VISION_START, VISION_END, PAD = special_tokens(VOCAB)


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = [VISION_START] + [IMAGE] * (int(np.prod(GRID)) // 4) + [VISION_END]
    rows = [rng.integers(0, 3000, 40).tolist() + image + rng.integers(0, 3000, 60).tolist(),
            rng.integers(0, 3000, 10).tolist() + image + rng.integers(0, 3000, 30).tolist()]
    width = max(map(len, rows))
    ids = np.full((2, width), PAD, np.int64)
    mask = np.zeros((2, width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    grids = np.array([GRID, GRID])
    pixels = rng.standard_normal((int(grids.prod(-1).sum()), 3 * 2 * 14 * 14)).astype(np.float32)
    return ids, mask, pixels, grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    reference = torch_vl_model(VOCAB)
    ids, mask, pixels, grids = batch()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = from_pretrained(directory)

    t_inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels),
                    image_grid_thw=torch.tensor(grids), mm_token_type_ids=(torch.tensor(ids) == IMAGE).int())

    def run_torch():
        with torch.inference_mode():
            return reference(**t_inputs).logits

    def run_jax():
        return jax.block_until_ready(model.forward(ids, mask, pixels, grids))

    graphdef, state = nnx.split(model)
    prepared = prepare_inputs(model.config, ids, mask, pixels, grids)
    core = jax.jit(lambda state, *inputs: nnx.merge(graphdef, state)(*inputs).logits)

    def run_core():
        return jax.block_until_ready(core(state, *prepared))

    diff = float(np.abs(np.asarray(run_jax()) - run_torch().numpy())[mask.astype(bool)].max())
    t_torch, t_jax, t_core = median_seconds([run_torch, run_jax, run_core], args.repeats, warmup=2)
    print(f"batch {ids.shape[0]} x {ids.shape[1]} tokens, {pixels.shape[0]} patches; CPU, float32, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}")
    print(f"max |logit difference| jaxbiqa vs transformers: {diff:.2e}")
    print(f"transformers (PyTorch) forward: {t_torch * 1e3:8.1f} ms (median of {args.repeats})")
    print(f"jaxbiqa forward (host prep + jit):  {t_jax * 1e3:8.1f} ms   ratio torch/jaxbiqa = {t_torch / t_jax:.2f}")
    print(f"jaxbiqa jitted core only:          {t_core * 1e3:8.1f} ms   ratio torch/jaxbiqa = {t_torch / t_core:.2f}")


if __name__ == "__main__":
    main()
