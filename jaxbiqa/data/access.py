"""Random-access record sources (`__len__` / `__getitem__`), the form grain's MapDataset reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class RecordList:
    """A list of records, optionally converted on access."""

    def __init__(self, records: Sequence[Any], convert: Callable[[Any], Mapping[str, Any]] | None = None):
        self._records = records if hasattr(records, "__getitem__") else list(records)
        self._convert = convert

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        item = self._records[index]
        return self._convert(item) if self._convert else item


class Concat:
    """Several sources, one after the other."""

    def __init__(self, sources: Sequence[Any]):
        self._sources = [s for s in sources if len(s)]
        self._ends = np.cumsum([len(s) for s in self._sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        part = int(np.searchsorted(self._ends, index, side="right"))
        return self._sources[part][index - (self._ends[part - 1] if part else 0)]
