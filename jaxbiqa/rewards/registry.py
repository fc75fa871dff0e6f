"""Rewards by name and their weighted sum, as configs describe them.

Every reward is a factory taking keyword-only parameters and returning a `RewardFn`. A
`RewardSpec(name, weight, kwargs)` names one; `build_reward(specs)` checks them all up front and
returns a `WeightedReward` whose call gives the weighted total and every unweighted component.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from jaxbiqa.config import ConfigError, RewardsSection, closest_key, coerce_value
from jaxbiqa.rewards.base import Batch, RewardFn
from jaxbiqa.rewards.consistency import self_consistency_reward
from jaxbiqa.rewards.degradation import degradation_reward
from jaxbiqa.rewards.format import format_reward, qinsight_format_reward
from jaxbiqa.rewards.ranking import ranking_reward
from jaxbiqa.rewards.reasoning import reasoning_reward
from jaxbiqa.rewards.score import score_reward

REWARDS: Mapping[str, Callable[..., RewardFn]] = MappingProxyType(
    {
        "format": format_reward,
        "qinsight_format": qinsight_format_reward,
        "score": score_reward,
        "self_consistency": self_consistency_reward,
        "reasoning": reasoning_reward,
        "ranking": ranking_reward,
        "degradation": degradation_reward,
    }
)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One reward of a weighted sum: a registered `name`, its `weight`, its factory `kwargs`."""

    name: str
    weight: float = 1.0
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def reward_params(name: str) -> tuple[str, ...]:
    """The keyword parameters the reward `name` accepts."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {sorted(REWARDS)}")
    return tuple(inspect.signature(REWARDS[name]).parameters)


def make_reward(name: str, **kwargs: Any) -> RewardFn:
    """The reward `name` built with `kwargs`; unknown names or parameters raise, listing valid ones."""
    unknown = sorted(set(kwargs) - set(reward_params(name)))
    if unknown:
        raise TypeError(f"reward {name!r} has no parameter(s) {unknown}; valid parameters: {list(reward_params(name))}")
    return REWARDS[name](**kwargs)


def _as_spec(spec: RewardSpec | Mapping[str, Any], index: int) -> RewardSpec:
    if isinstance(spec, RewardSpec):
        return spec
    if isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(RewardSpec)}
        extra = sorted(set(spec) - fields)
        if extra or "name" not in spec:
            raise ValueError(
                f"reward spec #{index} {dict(spec)!r}: needs 'name', may have {sorted(fields)}; got extra {extra}"
            )
        return RewardSpec(**spec)
    raise TypeError(f"reward spec #{index} must be a RewardSpec or a mapping, got {type(spec).__name__}")


class WeightedReward:
    """Called like a reward fn; returns `(total, components)`: the float32 weighted sum and, per
    component label, its unweighted float32 values. Labels are the reward names, suffixed `_2`,
    `_3`, ... when a name repeats."""

    def __init__(self, specs: Sequence[RewardSpec | Mapping[str, Any]]):
        self.specs = tuple(_as_spec(s, i) for i, s in enumerate(specs))
        if not self.specs:
            raise ValueError("build_reward: at least one reward spec is needed")
        labels, fns, weights = [], [], []
        for i, spec in enumerate(self.specs):
            try:
                weight = float(spec.weight)
            except (TypeError, ValueError):
                weight = math.nan
            if not math.isfinite(weight):
                raise ValueError(f"reward {spec.name!r}: weight must be a finite number, got {spec.weight!r}")
            fns.append(make_reward(spec.name, **dict(spec.kwargs)))
            weights.append(np.float32(weight))
            repeat = sum(s.name == spec.name for s in self.specs[:i])
            labels.append(spec.name if repeat == 0 else f"{spec.name}_{repeat + 1}")
        self.labels: tuple[str, ...] = tuple(labels)
        self._fns = tuple(fns)
        self._weights = tuple(weights)

    def __call__(self, completions: Sequence[str], batch: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(completions)
        total = np.zeros(n, np.float32)
        components: dict[str, np.ndarray] = {}
        for label, weight, fn in zip(self.labels, self._weights, self._fns, strict=True):
            values = np.asarray(fn(completions, batch), np.float32)
            if values.shape != (n,):
                raise ValueError(f"reward {label!r} returned shape {values.shape} for {n} completions")
            components[label] = values
            total += weight * values
        return total, components

    def __repr__(self) -> str:
        parts = ", ".join(f"{label}*{spec.weight:g}" for label, spec in zip(self.labels, self.specs, strict=True))
        return f"WeightedReward({parts})"


def build_reward(specs: Sequence[RewardSpec | Mapping[str, Any]]) -> WeightedReward:
    """The weighted sum of `specs` (RewardSpec or {"name", "weight", "kwargs"} mappings)."""
    return WeightedReward(specs)


def reward_specs(section: RewardsSection) -> list[RewardSpec]:
    """The config's non-zero reward terms as specs for `build_reward`; an unknown reward or
    parameter, or a value of the wrong type, is a ConfigError naming its key."""
    for name in {**section.weights, **section.params}:
        if name not in REWARDS:
            raise ConfigError(f"unknown reward 'rewards.weights.{name}'{closest_key(name, list(REWARDS))}")
    specs = []
    for name, weight in section.weights.items():
        if weight == 0:
            continue
        hints = typing.get_type_hints(REWARDS[name])
        hints.pop("return", None)
        kwargs = {}
        for key, value in section.params.get(name, {}).items():
            where = f"rewards.params.{name}.{key}"
            if key not in hints:
                raise ConfigError(f"unknown reward parameter {where!r}{closest_key(key, list(hints))}")
            kwargs[key] = coerce_value(value, hints[key], where)
        specs.append(RewardSpec(name, weight, kwargs))
    return specs
