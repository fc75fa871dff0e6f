"""The reward-function contract and the batch-field helpers every reward shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Batch = Mapping[str, Any]
# fn(completions, batch) -> float32 array with one value per completion.
RewardFn = Callable[[Sequence[str], Batch], np.ndarray]


def column(batch: Batch, key: str, n: int, *, reward: str) -> Sequence[Any]:
    """`batch[key]`, checked to hold one entry per completion; `reward` names the caller in errors."""
    if key not in batch:
        raise KeyError(f"reward {reward!r} needs batch field {key!r}; the batch has {sorted(batch)}")
    values = batch[key]
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"reward {reward!r}: batch field {key!r} must be a sequence, got {type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: batch field {key!r} has {len(values)} entries for {n} completions")
    return values


def float_column(batch: Batch, key: str, n: int, *, reward: str) -> np.ndarray:
    """A numeric batch field as float64 (None -> NaN); a non-numeric entry is an error naming its index."""
    values = column(batch, key, n, reward=reward)
    out = np.empty(n, np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = np.nan if v is None else float(v)
        except (TypeError, ValueError):
            raise ValueError(f"reward {reward!r}: batch field {key!r}[{i}] is not a number: {v!r}") from None
    return out
