"""A tiny evaluation set-up shared by the evaluation, `jaxbiqa eval` and `jaxbiqa score` tests: the
demo's byte-level BPE tokenizer with a smaller random Qwen2.5-VL, a small synthetic set (4 photos,
one crop, one distortion type: 6 test images of 56 x 56 pixels = 4 visual tokens) and the config
overrides that fit them. `shared_root` builds the tokenizer, the synthetic set and a saved random
model once per test session, for the modules that only read them."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from jaxbiqa.demo_assets import DEMO_TOKEN_IDS, DemoModelSpec, ensure_demo_model

SPEC = DemoModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                     vision_depth=1, vision_hidden=32, vision_intermediate=64, vision_heads=2)
PAD, EOS = DEMO_TOKEN_IDS["<|endoftext|>"], DEMO_TOKEN_IDS["<|im_end|>"]
TEST_IMAGES = 6


def overrides(model_dir: Path, data_dir: Path, batch_size: int = 4) -> list[str]:
    """`--set` values: the tiny model, the small synthetic set, short completions, demo token ids."""
    sets = [f"model.path={model_dir}", "model.init=random", "model.dtype=float32", f'data.eval=["synthetic:{data_dir}"]',
            f'data.train=["synthetic:{data_dir}"]', "data.synthetic_num_photos=4",
            "data.synthetic_crops_per_photo=1", "data.synthetic_types_per_crop=1", "data.synthetic_crop_size=56",
            "data.max_pixels=3136", f"data.global_batch_size={batch_size}",
            "rollout.pass1.max_new_tokens=20", "rollout.pass2.max_new_tokens=10",
            "rollout.pass1.prompt_buckets=[128]"]
    for name in ("pass1", "pass2"):
        sets += [f"rollout.{name}.pad_token_id={PAD}", f"rollout.{name}.eos_token_ids=[{EOS}]"]
    return sets


def model_folder(root: Path) -> Path:
    """Tokenizer and config.json of the tiny model (no weights: random init from the config)."""
    return ensure_demo_model(root / "model", SPEC)


def save_random_weights(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """A Hugging Face folder: random weights of the tiny model, its tokenizer and image processor."""
    from jaxbiqa.config import load_config
    from jaxbiqa.models.build import build_policy, build_processor
    from jaxbiqa.models.qwen2_5_vl import save_pretrained

    config = load_config(None, [f"model.path={model_dir}", "model.init=random"])
    save_pretrained(build_policy(config.model, seed=seed), out)
    build_processor(config.model, config.data).save_pretrained(out)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@functools.cache
def shared_root() -> Path:
    """A session-wide folder with `model/` (tokenizer + config.json), `hf/` (random weights, seed 0)
    and `synthetic/` (generated on first use by the pipeline); removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="jaxbiqa-eval-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    save_random_weights(model_folder(root), root / "hf")
    return root
