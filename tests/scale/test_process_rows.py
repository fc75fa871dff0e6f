"""Data parallel reading: each of P processes reads its contiguous 1/P slice of every global
batch, so P processes read the batches of one process with the same global batch size."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))
from trainer_helpers import make_assets, tiny_settings  # noqa: E402

from jaxbiqa.data.pipeline import BatchPlan, ProcessRows, make_pipeline  # noqa: E402


def _plan(count: int, drop: bool) -> BatchPlan:
    """10 records of one image size in order, global batches of 2 rows per shard."""
    return BatchPlan(np.full((10, 2), 28), 2 * count, shuffle=False, drop_remainder=drop)


def _rows(count: int, index: int, drop: bool) -> list[int]:
    shard = ProcessRows(_plan(count, drop), 2, index, count, num_epochs=1)
    return [shard[i].record for i in range(len(shard))]


def test_contiguous_slices_of_each_global_batch():
    assert _rows(2, 0, True) == [0, 1, 4, 5] and _rows(2, 1, True) == [2, 3, 6, 7]
    assert _rows(2, 0, False) == [0, 1, 4, 5, 8, 9] and _rows(2, 1, False) == [2, 3, 6, 7]  # the last, partial one
    assert _rows(1, 0, True) == list(range(10))
    assert len(ProcessRows(_plan(2, True), 2, 1, 2, num_epochs=None)) > 10 ** 9  # no end
    with pytest.raises(ValueError, match="0 <= index < count"):
        ProcessRows(_plan(2, True), 2, 2, 2, num_epochs=1)


def test_two_shards_read_the_global_batches_of_one(tmp_path):
    model_dir, data_dir = make_assets(tmp_path)
    data = dataclasses.replace(tiny_settings(model_dir, data_dir, tmp_path / "out")["data"], num_epochs=2)

    def ids(index: int, count: int) -> list[list[str]]:
        shard = dataclasses.replace(data, global_batch_size=2, shard_index=index, shard_count=count)
        return [[str(i) for i in batch["id"]] for batch in make_pipeline(shard, "train")]

    single = ids(0, 1)
    first, second = ids(0, 2), ids(1, 2)
    assert len(single) == len(first) == len(second) >= 2
    assert [a + b for a, b in zip(first, second)] == single
    assert len({i for batch in single for i in batch}) > 2  # shuffled records, not one repeated
