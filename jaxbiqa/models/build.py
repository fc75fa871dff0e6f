"""The policy and its processor from the config's `model` section (and the data section's pixel budget).

`model.path` is one of
* a Hugging Face Qwen2.5-VL folder (`config.json` + safetensors): the weights are loaded
  (`weights.from_pretrained`, sharded by the mesh when one is given);
  a folder without them is an error naming what it holds (PyTorch `.bin` files: how to convert them);
* with `model.init="random"`, a folder with a `config.json`, or a `config.json` file: the model is
  initialised randomly from it, an explicit choice (the demo's from-scratch start; a recipe's
  `demo:FOLDER` is built, resolved to such a folder and marked random by the commands,
  `jaxbiqa.demo_assets.resolve_demo_model`).
`weights_source` says which of the two a section gives, for the metadata of what was evaluated.
The tokenizer comes from `model.tokenizer`, else from the model folder; the image processor from
the model folder's `preprocessor_config.json` (Qwen's defaults without one) with the data
section's `min_pixels` / `max_pixels`. `model.lora_rank > 0` adds LoRA adapters. Folders may be
local or in a bucket (`gs://...`, `jaxbiqa.paths`).
"""

from __future__ import annotations

from etils import epath
from flax import nnx

from jaxbiqa.config import ConfigError, DataSection
from jaxbiqa.models.qwen2_5_vl import LoraConfig, ModelConfig, Qwen2_5_VLForConditionalGeneration
from jaxbiqa.models.qwen2_5_vl.weights import (
    INDEX_FILE, SINGLE_FILE, abstract_model, load_model, missing_weights, read_config)
from jaxbiqa.paths import as_path
from jaxbiqa.processing import Processor, load_image_processor, load_tokenizer
from jaxbiqa.prompts import prompt_set
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules


def resolve_model_path(path: str) -> epath.Path:
    """The model folder or config file of `model.path`."""
    if not path:
        raise ConfigError("model.path is empty: set it to a Qwen2.5-VL folder or a config.json")
    if path.startswith("demo:"):
        raise ConfigError(f"model.path {path!r} names the demo model, which the commands build: pass the config "
                         "through jaxbiqa.demo_assets.resolve_demo_model first")
    resolved = as_path(path)
    if not resolved.exists():
        raise ConfigError(f"model.path {path!r} does not exist (a Qwen2.5-VL folder or a config.json)")
    return resolved


def has_weights(path: epath.Path) -> bool:
    return path.is_dir() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def model_config(section, path: epath.Path) -> ModelConfig:
    """The ModelConfig of `path` with the section's dtypes, remat, scanned layers, attention and LoRA."""
    lora = None
    if section.lora_rank > 0:
        lora = LoraConfig(rank=section.lora_rank, alpha=section.lora_alpha, dropout=section.lora_dropout,
                          target_modules=tuple(section.lora_targets), param_dtype=section.lora_dtype)
    return read_config(path, section.dtype, section.param_dtype, remat=section.remat,
                       scan_layers=section.scan_layers, attention=section.attention,
                       attention_block=section.attention_block, lora=lora)


def build_policy(section, *, seed: int = 0, mesh=None, rules: LogicalRules = DEFAULT_RULES) -> nnx.Module:
    """The policy of a `ModelSection`: `model.path`'s weights, or a random init with `model.init="random"`.

    A randomly initialised model lives on the default device; `UpdateStep.init` places it on the
    mesh. LoRA adapters start at B = 0 (the loaded model, unchanged).
    """
    path = resolve_model_path(section.path)
    config = model_config(section, path)
    if section.init == "random":
        return Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(seed))
    if not has_weights(path):
        raise missing_weights(path if path.is_dir() else path.parent,
                              "model.init=random initialises the architecture of its config.json randomly")
    return load_model(config, path, mesh, rules, seed)


def weights_source(section, seed: int) -> dict:
    """What `build_policy(section, seed=seed)` starts from: {"kind": "hf", "path"} or {"kind": "random", ...}."""
    if section.init == "random":
        return {"kind": "random", "path": section.path, "seed": seed}
    return {"kind": "hf", "path": section.path}


def abstract_policy(section, *, seed: int = 0) -> nnx.Module:
    """The policy's structure with `jax.ShapeDtypeStruct` leaves (nothing allocated, no weights read):
    enough to build the update step and restore a checkpoint into."""
    return abstract_model(model_config(section, resolve_model_path(section.path)), seed)


def build_processor(section, data: DataSection = DataSection()) -> Processor:
    """Tokenizer (`model.tokenizer`, else the model folder), image processor with the data's pixel
    budget, and the data section's prompt set."""
    try:
        prompts = prompt_set(data.prompts)
    except KeyError as err:
        raise ConfigError(f"data.prompts: {err.args[0]}") from None
    path = resolve_model_path(section.path)
    folder = path if path.is_dir() else path.parent
    tokenizer = load_tokenizer(section.tokenizer or folder)
    return Processor(tokenizer, load_image_processor(folder, data.min_pixels, data.max_pixels), prompts)
