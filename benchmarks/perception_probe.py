"""How fast can the demo's vision tower learn quality perception? An upper bound for the demo.

  python benchmarks/perception_probe.py [--data DIR] [--crops-per-photo 16] [--patch 7 --merge 4 --depth 1]
                                        [--steps 1000] [--batch 16] [--lr 3e-3]

A Qwen2.5-VL vision tower of the given size (`jaxbiqa.models.qwen2_5_vl.VisionTower`, random
init), mean-pooled over its merged tokens, with linear heads trained directly on the synthetic
set's targets: the rating (squared error), the distortion type and the level (cross-entropy),
i.e. the perception the demo's warm start must teach the whole VLM through its caption and
rating tokens. Trained on the `train` split, it prints on the `seen` split (set (a): new crops of
the training photos) the SRCC of the predicted rating and the type / level accuracies, overall
and per distortion type, with the training seconds. The demo model cannot beat what its tower
learns this directly in the same number of steps, so this bounds the demo's set-(a) figures.

The set is generated into `--data` (default `runs/probe/synthetic_<crops>`) when missing, with
the demo's crop size, types per crop and seen crops.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image
from scipy import stats

from jaxbiqa.data.synthetic import SynthSpec, write_synthetic
from jaxbiqa.models.qwen2_5_vl.config import VisionConfig
from jaxbiqa.models.qwen2_5_vl.vision import VisionTower, vision_plan
from jaxbiqa.processing import make_image_processor

SIDE = 112  # the demo's image side


def load_split(folder: Path, split: str, processor, types: list[str]) -> dict[str, np.ndarray]:
    info = json.loads((folder / "info.json").read_text())["images"]
    records = [r for r in map(json.loads, (folder / "index.jsonl").read_text().splitlines()) if r["split"] == split]
    out = processor(images=[Image.open(folder / r["image"]).convert("RGB") for r in records], return_tensors="np")
    pixels = np.asarray(out["pixel_values"], np.float32)
    return {"pixels": pixels.reshape(len(records), -1, pixels.shape[-1]), "grid": np.asarray(out["image_grid_thw"]),
            "rating": np.array([r["mos_norm"] for r in records], np.float32),
            "type": np.array([types.index(info[r["id"]]["distortion"]) for r in records]),
            "level": np.array([info[r["id"]]["level"] for r in records])}


class Probe(nnx.Module):
    def __init__(self, config: VisionConfig, num_types: int, *, rngs: nnx.Rngs):
        self.tower = VisionTower(config, rngs=rngs)
        self.num_types = num_types
        self.head = nnx.Linear(config.out_hidden_size, 1 + num_types + 6, rngs=rngs)  # rating, type, level 0-5

    def __call__(self, pixels: jnp.ndarray, plan) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        batch = pixels.shape[0]
        pooled = self.tower(pixels.reshape(-1, pixels.shape[-1]), plan).reshape(batch, -1, self.head.in_features)
        out = self.head(pooled.mean(axis=1))
        return out[:, 0] + 3.0, out[:, 1:1 + self.num_types], out[:, 1 + self.num_types:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--crops-per-photo", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--patch", type=int, default=7)
    parser.add_argument("--merge", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = args.data or Path("runs") / "probe" / f"synthetic_{args.crops_per_photo}"
    if not (folder / "index.jsonl").is_file():
        started = time.perf_counter()
        write_synthetic(folder, SynthSpec(seed=args.seed, crops_per_photo=args.crops_per_photo, crop_size=SIDE,
                                          types_per_crop=3, seen_crops_per_photo=2), progress=False)
        print(f"generated {folder} in {time.perf_counter() - started:.0f} s")
    types = sorted({v["distortion"] for v in json.loads((folder / "info.json").read_text())["images"].values()})
    processor = make_image_processor(SIDE * SIDE, SIDE * SIDE, patch_size=args.patch, merge_size=args.merge)
    train, seen = (load_split(folder, split, processor, types) for split in ("train", "seen"))
    config = VisionConfig(depth=args.depth, hidden_size=args.width, intermediate_size=2 * args.width, num_heads=2,
                          patch_size=args.patch, spatial_merge_size=args.merge, window_size=SIDE, out_hidden_size=96,
                          fullatt_block_indexes=(args.depth - 1,))
    plan = vision_plan(np.tile(train["grid"][:1], (args.batch, 1)), config)
    model = Probe(config, len(types), rngs=nnx.Rngs(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, 20, args.steps, args.lr / 20)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, pixels, rating, kind, level):
        def loss_fn(model):
            predicted, type_logits, level_logits = model(pixels, plan)
            return (jnp.mean((predicted - rating) ** 2)
                    + optax.softmax_cross_entropy_with_integer_labels(type_logits, kind).mean()
                    + optax.softmax_cross_entropy_with_integer_labels(level_logits, level).mean())
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, pixels):
        rating, type_logits, level_logits = model(pixels, plan)
        return rating, type_logits.argmax(-1), level_logits.argmax(-1)

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for _ in range(args.steps):
        rows = rng.choice(len(train["rating"]), args.batch, replace=False)
        step(model, optimizer, *(jnp.asarray(train[k][rows]) for k in ("pixels", "rating", "type", "level")))
    seconds = time.perf_counter() - started

    usable = len(seen["rating"]) // args.batch * args.batch
    outputs = [predict(model, jnp.asarray(seen["pixels"][i:i + args.batch])) for i in range(0, usable, args.batch)]
    rating, kind, level = (np.concatenate([np.asarray(o[j]) for o in outputs]) for j in range(3))
    truth = {k: v[:usable] for k, v in seen.items()}
    print(f"tower depth {args.depth} width {args.width} patch {args.patch} merge {args.merge} "
          f"({(SIDE // args.patch) ** 2} patches, {(SIDE // args.patch // args.merge) ** 2} tokens); "
          f"{args.steps} steps of {args.batch} on {len(train['rating'])} training images in {seconds:.0f} s")
    print(f"set (a), {usable} images: rating SRCC {stats.spearmanr(rating, truth['rating'])[0]:.3f}, "
          f"type accuracy {np.mean(kind == truth['type']):.2f}, level accuracy {np.mean(level == truth['level']):.2f}")
    for index, name in enumerate(types):
        chosen = truth["type"] == index
        srcc = stats.spearmanr(rating[chosen], truth["rating"][chosen])[0] if name != "none" else float("nan")
        print(f"  {name:<14} n={chosen.sum():>3}  type {np.mean(kind[chosen] == index):.2f}  "
              f"level {np.mean(level[chosen] == truth['level'][chosen]):.2f}  SRCC {srcc:.2f}")


if __name__ == "__main__":
    main()
