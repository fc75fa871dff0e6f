"""A tiny end-to-end training setup for the trainer tests: a small synthetic set, a tiny
Qwen2.5-VL config with the demo tokenizer, and a config (object or file) that runs in seconds.

Tests here import it as `from trainer_helpers import ...`; others put `tests/rl` on `sys.path` first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from jaxbiqa.config import (
    CheckpointSection, Config, DataSection, EvalSection, GRPOSection, ModelSection, OptimSection, RolloutSection,
    SFTSection, SamplingSection)
from jaxbiqa.demo_assets import ENDOFTEXT_ID, IM_END_ID, DemoModelSpec, build_demo_tokenizer, demo_model_config

TINY_SPEC = DemoModelSpec(bpe_vocab=1536, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                          num_kv_heads=1, vision_depth=1, vision_hidden=32, vision_intermediate=32, vision_heads=2)
IMAGE_SIDE = 56  # 4 x 4 patches, 4 image tokens


def make_assets(root: Path) -> tuple[Path, Path]:
    """(model folder with config.json + tokenizer, synthetic data folder) under `root` (built once)."""
    model_dir, data_dir = root / "model", root / "synthetic"
    if not (model_dir / "config.json").is_file():
        build_demo_tokenizer(model_dir, TINY_SPEC.bpe_vocab)
        (model_dir / "config.json").write_text(json.dumps(demo_model_config(TINY_SPEC)))
    return model_dir, data_dir


def write_image_records(data: Path, count: int) -> Path:
    """A JSON-lines set of `count` random images (`IMAGE_SIDE` pixels, MOS 1, 2, ...) in `data`."""
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(data / "index.jsonl", "w") as index:
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)).save(data / f"images/{i}.png")
            index.write(json.dumps({"image": f"images/{i}.png", "id": str(i), "dataset": "toy", "split": "train",
                                    "mos_norm": 1.0 + i}) + "\n")
    return data


def tiny_settings(model_dir: Path, data_dir: Path, output_dir: Path | str) -> dict:
    """Keyword arguments of `Config` for a run of a few seconds."""
    eos = (IM_END_ID, ENDOFTEXT_ID)
    side = IMAGE_SIDE * IMAGE_SIDE
    return dict(
        name="tiny", seed=0, output_dir=str(output_dir),
        model=ModelSection(path=str(model_dir), init="random", param_dtype="float32", dtype="float32", remat=False,
                           scan_layers=False),
        data=DataSection(train=(f"synthetic:{data_dir}",), eval=(f"synthetic:{data_dir}",), global_batch_size=2,
                         max_pixels=side, min_pixels=side, num_epochs=1, synthetic_num_photos=4,
                         synthetic_crop_size=IMAGE_SIDE, synthetic_crops_per_photo=1, synthetic_types_per_crop=1,
                         read_threads=1, prefetch_buffer_size=2),
        rollout=RolloutSection(
            pass1=SamplingSection(max_new_tokens=48, num_samples=2, stop_strings=("</answer>",), eos_token_ids=eos,
                                 pad_token_id=ENDOFTEXT_ID),
            pass2=SamplingSection(max_new_tokens=12, stop_strings=("</answer>",), eos_token_ids=eos,
                                 pad_token_id=ENDOFTEXT_ID)),
        grpo=GRPOSection(beta=1e-3),
        optim=OptimSection(learning_rate=1e-3, schedule="constant", freeze_vision=True),
        sft=SFTSection(steps=2, optim=OptimSection(learning_rate=3e-3, schedule="constant", freeze_vision=False)),
        checkpoint=CheckpointSection(save_interval_steps=2, async_save=False),
        eval=EvalSection(decoding="greedy"),
    )


def tiny_config(model_dir: Path, data_dir: Path, output_dir: Path | str, **changes) -> Config:
    return Config(**{**tiny_settings(model_dir, data_dir, output_dir), **changes})


CONFIG_FILE = '''"""A tiny run for the `jaxbiqa train` subprocess tests (written by tests/rl/trainer_helpers.py)."""
import sys
sys.path.insert(0, {helpers!r})
from trainer_helpers import tiny_config
from pathlib import Path


def get_config():
    return tiny_config(Path({model!r}), Path({data!r}), {out!r})
'''


def write_config_file(path: Path, model_dir: Path, data_dir: Path, output_dir: Path | str) -> Path:
    """A config .py file for `jaxbiqa train --config PATH` with the tiny settings."""
    path.write_text(CONFIG_FILE.format(helpers=str(Path(__file__).parent), model=str(model_dir), data=str(data_dir),
                                       out=str(output_dir)))
    return path
