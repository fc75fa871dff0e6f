"""A trained policy to evaluate or score with: a Hugging Face folder, a jaxbiqa run, an orbax
checkpoint directory or one step's folder, or the config's `model.path` (see `jaxbiqa eval`).

An orbax checkpoint's parameters are restored with `jaxbiqa.checkpoint` into the model rebuilt
from the config saved beside them (the whole config when no recipe is given; overrides on top).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from jaxbiqa.checkpoint import Checkpointer
from jaxbiqa.config import Config, UserError, apply_override, from_dict, load_config
from jaxbiqa.models.build import abstract_policy, build_policy, build_processor, has_weights, weights_source
from jaxbiqa.models.qwen2_5_vl.weights import missing_weights
from jaxbiqa.paths import PathLike, as_path

CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG = "config.json"  # the resolved config a training run writes into its output directory


class Policy(NamedTuple):
    model: Any          # the nnx model
    processor: Any      # jaxbiqa.processing.Processor
    config: Config      # the config to evaluate with
    source: dict        # what was loaded: kind, path, step


class CheckpointError(UserError):
    """A --checkpoint path that cannot be loaded; the message says what was expected."""


def _is_step_dir(path: epath.Path) -> bool:
    return path.name.isdigit() and path.is_dir()


def _has_steps(path: epath.Path) -> bool:
    return path.is_dir() and any(_is_step_dir(p) for p in path.iterdir())


def find_checkpoint(path: PathLike) -> tuple[str, epath.Path, int | None]:
    """("hf", folder, None) or ("orbax", checkpoint directory, step or None) for a --checkpoint PATH
    (local or `gs://...`)."""
    path = as_path(path)
    if not path.exists():
        raise CheckpointError(f"--checkpoint {path}: no such file or directory")
    if has_weights(path):
        return "hf", path, None
    if (path / CHECKPOINTS_DIR).is_dir():
        directory = path / CHECKPOINTS_DIR
        saved = path / RUN_CONFIG
        if saved.is_file():  # a run may keep its checkpoints elsewhere (checkpoint.directory)
            custom = json.loads(saved.read_text()).get("checkpoint", {}).get("directory")
            if custom:
                directory = as_path(custom)
        if not _has_steps(directory):
            raise CheckpointError(f"--checkpoint {path}: the run has no checkpoint yet in {directory}")
        return "orbax", directory, None
    if _has_steps(path):
        return "orbax", path, None
    if _is_step_dir(path) and _has_steps(path.parent):
        return "orbax", path.parent, int(path.name)
    if (path / "config.json").is_file():  # a Hugging Face folder without (safetensors) weights
        raise missing_weights(path)
    raise CheckpointError(
        f"--checkpoint {path}: not a Hugging Face checkpoint (config.json + model.safetensors), a jaxbiqa run "
        f"directory (with {CHECKPOINTS_DIR}/), an orbax checkpoint directory (numbered step folders) or one step's "
        f"folder")


def _with_overrides(config: Config, overrides: Sequence[str]) -> Config:
    for assignment in overrides:
        config = apply_override(config, assignment)
    return config


def _path_key(path: Sequence[Any]) -> str:
    """'a/b/0/c' from an nnx state path or an orbax key path (without the Variable's 'value' leaf)."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(names[:-1] if names and names[-1] == "value" else names)


def restore_parameters(directory: PathLike, step: int | None) -> tuple[int, dict[str, Any], dict | None]:
    """(step, {state path: host array}, saved config) of a training checkpoint written by the trainer:
    its train state's `params` and `frozen` parts together hold every variable of the model."""
    try:
        host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:  # no CPU backend: restore to the default device
        host = None
    checkpointer = Checkpointer(directory, max_to_keep=None, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None or step not in checkpointer.all_steps():
            raise CheckpointError(f"{directory}: no checkpoint for step {step} (have {checkpointer.all_steps()})")
        metadata = checkpointer.manager.item_metadata(step)["state"]
        # the whole saved tree is restored (orbax's standard handler restores no subtree alone), on the host
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), metadata)
        restored = checkpointer.restore(target, step=step)
    finally:
        checkpointer.close()
    state = restored.state["train"] if "train" in restored.state else restored.state
    if not isinstance(state, dict) or "params" not in state or "frozen" not in state:
        raise CheckpointError(f"{directory}/{step}: not a jaxbiqa training checkpoint (expected a train state with "
                              f"params and frozen parts, found {sorted(state) if isinstance(state, dict) else state})")
    arrays = {}
    for part in ("params", "frozen"):
        for path, value in jax.tree_util.tree_flatten_with_path(state[part])[0]:
            arrays[_path_key(path)] = value
    return restored.step, arrays, restored.config


def fill_model(model, arrays: dict[str, Any], where: str):
    """Set every variable of `model` (abstract or not) from `arrays` (state path -> array)."""
    missing, wrong = [], []
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        key = _path_key(path)
        value = arrays.get(key)
        current = variable.get_value()
        if value is None:
            missing.append(key)
        elif tuple(value.shape) != tuple(current.shape):
            wrong.append(f"{key} {tuple(value.shape)} vs {tuple(current.shape)}")
        else:
            variable.set_value(jnp.asarray(value, current.dtype))
    if missing or wrong:
        problems = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else [])
        problems += [f"shape mismatch {', '.join(wrong[:5])}"] if wrong else []
        raise CheckpointError(f"{where}: the checkpoint does not fit the model built from its config: "
                              + "; ".join(problems))
    return model


def load_policy(checkpoint: str | None, config_name: str | None, overrides: Sequence[str] = (), *,
                step: int | None = None, prepare: Callable[[Config], Config] | None = None) -> Policy:
    """The model, processor and config to evaluate (see the module doc for PATH). Without a
    checkpoint, `prepare` maps the recipe before its model is built (the commands resolve the
    demo's model path with it)."""
    if checkpoint is None:
        config = load_config(config_name, overrides)
        config = prepare(config) if prepare else config
        model = build_policy(config.model, seed=config.seed)
        return Policy(model, build_processor(config.model, config.data), config,
                      weights_source(config.model, config.seed))
    kind, path, found_step = find_checkpoint(checkpoint)
    if kind == "hf":
        if step is not None:
            raise CheckpointError(f"--step applies to orbax checkpoints; {path} is a Hugging Face folder")
        config = load_config(config_name)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(path), init="pretrained"))
        config = _with_overrides(config, overrides)
        model = build_policy(config.model, seed=config.seed)
        return Policy(model, build_processor(config.model, config.data), config, {"kind": "hf", "path": str(path)})
    step = found_step if step is None else step
    restored_step, arrays, saved = restore_parameters(path, step)
    if saved is None and config_name is None:
        raise CheckpointError(f"{path}: the checkpoint carries no config; pass the run's --config")
    saved_config = from_dict(Config, saved, "saved config") if saved is not None else None
    config = load_config(config_name) if config_name else saved_config
    if saved_config is not None:
        config = dataclasses.replace(config, model=saved_config.model)
    config = _with_overrides(config, overrides)
    model = fill_model(abstract_policy(config.model, seed=config.seed), arrays, f"{path} step {restored_step}")
    return Policy(model, build_processor(config.model, config.data), config,
                  {"kind": "orbax", "path": str(path), "step": restored_step})
