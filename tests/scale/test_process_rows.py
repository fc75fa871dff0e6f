"""Data parallel reading: each process reads its contiguous slice of every global batch, so P
processes with batch size b read the batches of one process with batch size P*b."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import grain
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))
from trainer_helpers import make_assets, tiny_settings  # noqa: E402

from jaxbiqa.data.pipeline import ProcessRows, make_pipeline  # noqa: E402


def _rows(count: int, index: int, drop: bool) -> list[int]:
    return list(ProcessRows(grain.MapDataset.range(10), 2, index, count, drop_remainder=drop))


def test_contiguous_slices_of_each_global_batch():
    assert _rows(2, 0, True) == [0, 1, 4, 5] and _rows(2, 1, True) == [2, 3, 6, 7]
    assert _rows(2, 0, False) == [0, 1, 4, 5, 8, 9] and _rows(2, 1, False) == [2, 3, 6, 7]  # the last, partial one
    assert _rows(1, 0, True) == list(range(10))
    assert len(ProcessRows(grain.MapDataset.range(10).repeat(None), 2, 1, 2)) > 10 ** 9  # no end
    with pytest.raises(ValueError, match="0 <= index < count"):
        ProcessRows(grain.MapDataset.range(10), 2, 2, 2)


def test_two_shards_read_the_global_batches_of_one(tmp_path):
    model_dir, data_dir = make_assets(tmp_path)
    data = dataclasses.replace(tiny_settings(model_dir, data_dir, tmp_path / "out")["data"], num_epochs=2)

    def ids(batch_size: int, index: int, count: int) -> list[list[str]]:
        shard = dataclasses.replace(data, batch_size=batch_size, shard_index=index, shard_count=count)
        return [[str(i) for i in batch["id"]] for batch in make_pipeline(shard, "train")]

    single = ids(2, 0, 1)
    first, second = ids(1, 0, 2), ids(1, 1, 2)
    assert len(single) == len(first) == len(second) >= 2
    assert [a + b for a, b in zip(first, second)] == single
    assert len({i for batch in single for i in batch}) > 2  # shuffled records, not one repeated
