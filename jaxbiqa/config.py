"""Configs: frozen dataclasses, loaded from Python files in `configs/`, with typed `--set` overrides.

A config file defines `get_config() -> Config`. Overrides are `dotted.key=value` strings; the
value is parsed for the field's declared type (int, float, bool, str, Literal, tuple, Optional,
dict entries), and an unknown key fails listing the valid keys with the closest one suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jaxbiqa.data.options import DataSection
from jaxbiqa.rl.options import CheckpointSection, GRPOSection, OptimSection, SFTSection
from jaxbiqa.rl.train_options import TrainSection
from jaxbiqa.rollout.options import RolloutConfig
from jaxbiqa.runtime_options import RuntimeSection

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The policy: where its weights come from and how it runs."""

    # a Hugging Face checkpoint folder (config.json + safetensors), or a config.json alone for a random init
    path: str = ""
    tokenizer: str = ""  # a tokenizer folder; "" means the one in `path`
    # Mixed precision as DeepSpeed's --bf16 (the authors' runs) does it: float32 master weights and
    # AdamW moments (`param_dtype`), each matmul in the compute `dtype` (the parameters are cast per
    # use inside the jitted step), logits, softmax, log-probs and the loss in float32. A bfloat16
    # parameter cannot take a 1e-6 update (its spacing near 0.02 is 1.2e-4, near 1.0 7.8e-3), so
    # trainable bfloat16 parameters are refused unless `allow_bf16_master_weights` says otherwise.
    # A frozen base (LoRA, a frozen vision tower) may be bfloat16: it only ever gets cast.
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # compute dtype
    # train bfloat16 parameters anyway (e.g. with stochastic rounding added to the optimizer)
    allow_bf16_master_weights: bool = False
    remat: bool = True
    scan_layers: bool = True
    lora_rank: int = 0  # 0: full fine-tuning; the method's LoRA option is rank 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dtype: Literal["float32", "bfloat16"] = "float32"  # the adapters' own (master) dtype


@dataclasses.dataclass(frozen=True)
class RewardsSection:
    """Reward terms by registered name (`jaxbiqa.rewards.REWARDS`): weights and factory parameters.

    The defaults are the paper (method.md section 4): score + self-consistency + reasoning, equal
    weights; the working format reward is registered but off (weight 0), see method.md 8.1. Ratings
    are read with the authors' strict parse (method.md 8.7: the first `<answer>…</answer>` block,
    `"rating": x` inside it, no range check), so a completion cut before `</answer>` earns 0: with
    the format reward off, that is the method's only format pressure. The tolerant parser is one
    setting away: `--set rewards.params.score.strict=false` (and for self_consistency).
    """

    # reward name -> weight; a term with weight 0 is not computed
    weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"score": 1.0, "self_consistency": 1.0, "reasoning": 1.0, "format": 0.0})
    # reward name -> keyword parameters of its factory; e.g. --set rewards.params.score.threshold=0.3
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {
        "score": {"kind": "cosine", "threshold": 0.35, "strict": True, "valid_range": None},
        "self_consistency": {"kind": "cosine", "threshold": 0.35, "against": "target", "strict": True,
                             "valid_range": None},
        "reasoning": {"measure": "precision", "text": "completion", "floor": 0.1},
        "format": {"value": 0.5, "strict": True},
    })

    def specs(self) -> list[dict[str, Any]]:
        """The non-zero terms as `jaxbiqa.rewards.build_reward` specs, names and parameter types checked."""
        from jaxbiqa.rewards import REWARDS  # imported here: rouge-score and scipy are slow to import

        for name in {**self.weights, **self.params}:
            if name not in REWARDS:
                raise ConfigError(f"unknown reward 'rewards.weights.{name}'{_closest(name, list(REWARDS))}")
        specs = []
        for name, weight in self.weights.items():
            if weight == 0:
                continue
            hints = typing.get_type_hints(REWARDS[name])
            hints.pop("return", None)
            kwargs = {}
            for key, value in self.params.get(name, {}).items():
                where = f"rewards.params.{name}.{key}"
                if key not in hints:
                    raise ConfigError(f"unknown reward parameter {where!r}{_closest(key, list(hints))}")
                kwargs[key] = _coerce(value, hints[key], where)
            specs.append({"name": name, "weight": weight, "kwargs": kwargs})
        return specs


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs/default"
    runtime: RuntimeSection = RuntimeSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    rollout: RolloutConfig = RolloutConfig()
    rewards: RewardsSection = RewardsSection()
    grpo: GRPOSection = GRPOSection()
    optim: OptimSection = OptimSection()
    sft: SFTSection = SFTSection()
    checkpoint: CheckpointSection = CheckpointSection()
    train: TrainSection = TrainSection()


def bf16_trained_parameters(config: Config) -> list[str]:
    """Which parameters a run of `config` trains while they are stored in bfloat16 (empty: none)."""
    model = config.model
    stages = [config.optim] + ([config.sft.optim] if config.sft.steps else [])
    found = []
    if model.lora_rank == 0 and model.param_dtype == "bfloat16":
        found.append("the decoder (full fine-tuning, model.param_dtype='bfloat16')")
    if model.lora_rank > 0 and model.lora_dtype == "bfloat16":
        found.append("the LoRA adapters (model.lora_dtype='bfloat16')")
    if model.param_dtype == "bfloat16" and any(not optim.freeze_vision for optim in stages):
        found.append("the vision tower (freeze_vision=false, model.param_dtype='bfloat16')")
    return found


def check_master_weights(config: Config) -> None:
    """Refuse trainable bfloat16 parameters: AdamW updates of ~lr are below their rounding step."""
    found = bf16_trained_parameters(config)
    if found and not config.model.allow_bf16_master_weights:
        raise ConfigError(
            f"{' and '.join(found)} would be trained in bfloat16: an update of lr={config.optim.learning_rate:g} "
            "rounds to nothing on bfloat16 weights (spacing 1.2e-4 near 0.02, 7.8e-3 near 1). Keep float32 master "
            "weights (model.param_dtype=float32, model.lora_dtype=float32; compute stays model.dtype=bfloat16), "
            "or set model.allow_bf16_master_weights=true if you add stochastic rounding yourself")


# ---------------------------------------------------------------- parsing values by declared type

def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _closest(key: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return f"{hint}; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (a string from the command line, or a JSON-like value) to type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean (true/false)")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got a boolean")
        try:
            number = tp(value) if not isinstance(value, str) else tp(value.strip())
        except (TypeError, ValueError):
            try:  # "1e-6" for an int field, "3" for a float field
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {value!r} is not a {tp.__name__}") from None
        if tp is int:
            if float(number) != int(float(number)):
                raise ConfigError(f"{where}: {value!r} is not an integer")
            return int(float(number))
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        items = _as_sequence(value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(items)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
    if origin in (list, Sequence):
        return tuple(_coerce(v, args[0] if args else Any, f"{where}[{i}]")
                     for i, v in enumerate(_as_sequence(value, where)))
    if origin in (dict, Mapping) or tp is dict:
        mapping = json.loads(value) if isinstance(value, str) else value
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args or (str, Any)
        return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in mapping.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: a section cannot be set to {value!r}; set its keys instead")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _as_sequence(value: Any, where: str) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: {value!r} is not a JSON list ({err})") from None
        return [] if not text else [v.strip() for v in text.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{where}: expected a list, got {value!r}")


# ---------------------------------------------------------------- dicts and overrides

def from_dict(cls: type, data: Mapping[str, Any], where: str = "config", base: Any = None) -> Any:
    """`base` (default `cls()`) updated from a possibly partial nested mapping, keys and types validated.

    Keys a mapping leaves out keep the base's values, in nested sections too (so a partial
    `{"rollout": {"pass1": {...}}}` keeps the rollout section's own pass-1 defaults).
    """
    base = cls() if base is None else base
    hints = _field_types(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{_closest(unknown[0], list(hints))}")
    values = {}
    for key, value in data.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            values[key] = from_dict(type(current), value, f"{where}.{key}", current)
        else:
            values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return _build(lambda: dataclasses.replace(base, **values), where)


def _build(make, where: str):
    """Construct a section; its own validation (`__post_init__`) becomes a ConfigError naming the key."""
    try:
        return make()
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready nested dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def apply_override(config: Any, assignment: str) -> Any:
    """Return `config` with one `a.b.c=value` override applied."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    return _set(config, key.strip().split("."), raw, key.strip())


def _set(node: Any, path: list[str], raw: str, full_key: str) -> Any:
    head, rest = path[0], path[1:]
    if dataclasses.is_dataclass(node):
        hints = _field_types(type(node))
        if head not in hints:
            prefix = full_key[: len(full_key) - len(".".join(path))]
            raise ConfigError(f"unknown config key {full_key!r}{_closest(prefix + head, [prefix + k for k in hints])}")
        current = getattr(node, head)
        if rest:
            if not (dataclasses.is_dataclass(current) or isinstance(current, Mapping)):
                raise ConfigError(f"config key {full_key!r}: {head!r} is a value, not a section")
            new = _set(current, rest, raw, full_key)
            if isinstance(current, Mapping):
                new = _coerce(new, hints[head], full_key)
        else:
            new = _coerce(raw, hints[head], full_key)
        return _build(lambda: dataclasses.replace(node, **{head: new}), full_key)
    if isinstance(node, Mapping):  # a dict field: set or add one entry; the value is parsed as JSON if it can be
        if rest:
            child = node.get(head, {})
            if not isinstance(child, Mapping):
                raise ConfigError(f"config key {full_key!r}: {head!r} is a value, not a mapping")
            return {**node, head: _set(child, rest, raw, full_key)}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        return {**node, head: value}
    raise ConfigError(f"config key {full_key!r}: cannot descend into a value")


# ---------------------------------------------------------------- config files

def resolve_config_path(name_or_path: str) -> Path:
    """A config file path, or a recipe name looked up in the repository's `configs/`."""
    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        return path
    candidate = CONFIGS_DIR / f"{path.stem if path.suffix == '.py' else name_or_path}.py"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in CONFIGS_DIR.glob("*.py")) if CONFIGS_DIR.is_dir() else []
    raise ConfigError(f"config {name_or_path!r} not found (not a file; recipes in {CONFIGS_DIR}: {', '.join(known) or 'none'})")


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a config file (or the defaults when None) and apply `key=value` overrides in order."""
    config = Config()
    if name_or_path:
        path = resolve_config_path(name_or_path)
        spec = importlib.util.spec_from_file_location(f"jaxbiqa_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{path}: a config file must define get_config() -> Config")
        config = module.get_config()
        if not isinstance(config, Config):
            raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not jaxbiqa.config.Config")
    for assignment in overrides:
        config = apply_override(config, assignment)
    check_master_weights(config)  # after every override: their order must not matter
    return config
