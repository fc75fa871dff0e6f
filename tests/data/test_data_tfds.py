"""Source -> TFDS ArrayRecord -> grain round trip."""

import dataclasses

import numpy as np
import pytest

from jaxbiqa.config import DataSection
from jaxbiqa.data.pipeline import make_pipeline
from jaxbiqa.data.records import FLOAT_FIELDS, STRING_FIELDS, BadRecordError
from jaxbiqa.data.sources import read_jsonl
from jaxbiqa.data.tfds_builder import TfdsRecords, build_tfds, dataset_dirs


@pytest.fixture(scope="module")
def built(synth_dir, tmp_path_factory):
    records = read_jsonl(synth_dir / "index.jsonl")
    out = tmp_path_factory.mktemp("tfds")
    path, report, written = build_tfds(records, out, "synthetic")
    assert len(report) == 0 and len(written) == len(records)
    return records, out, path


def test_build_writes_array_record_splits(built):
    records, out, path = built
    assert dataset_dirs(out) == [path]
    assert sorted(p.name.split(".")[0].split("-")[1] for p in path.glob("*.array_record*")) == ["test", "train"]


def test_round_trip_gives_the_same_records(built):
    records, out, _ = built
    source = TfdsRecords(out)
    back = {source[i]["id"]: source[i] for i in range(len(source))}
    assert set(back) == {r["id"] for r in records}
    for record in records:
        got = back[record["id"]]
        with open(record["image"], "rb") as handle:
            assert got["image"] == handle.read()          # stored encoded, byte for byte
        assert {k: got[k] for k in STRING_FIELDS} == {k: record[k] for k in STRING_FIELDS}
        for k in FLOAT_FIELDS:
            assert got[k] == float(np.float32(record[k])) or (np.isnan(got[k]) and np.isnan(record[k]))
    assert len(TfdsRecords(out, "test")) == sum(r["split"] == "test" for r in records)


def test_grain_over_tfds_matches_grain_over_the_source(built, synth_dir):
    _, out, _ = built
    options = DataSection(train=(f"synthetic:{synth_dir}",), global_batch_size=1, max_pixels=56 * 56,
                          shard_index=0, shard_count=1, drop_remainder=False, shuffle=False)

    def examples(data):
        return {str(b["id"][0]): b for b in make_pipeline(data, "train")}

    direct = examples(options)
    via_tfds = examples(dataclasses.replace(options, train=(f"tfds:{out}",)))
    assert set(direct) == set(via_tfds) and len(direct) > 10
    for key, batch in direct.items():
        other = via_tfds[key]
        assert np.array_equal(batch["image"], other["image"])
        for k in STRING_FIELDS:
            assert batch[k][0] == other[k][0]
        for k in FLOAT_FIELDS:
            np.testing.assert_array_equal(batch[k], other[k])


def test_build_skips_or_rejects_bad_images(synth_dir, tmp_path):
    records = read_jsonl(synth_dir / "index.jsonl")[:6]
    broken = tmp_path / "broken.png"
    broken.write_bytes(open(records[1]["image"], "rb").read()[:100])
    records[1] = {**records[1], "image": str(broken)}
    records[4] = {**records[4], "image": str(tmp_path / "missing.png")}
    with pytest.raises(BadRecordError, match=f"record synthetic/{records[1]['id']}: truncated image"):
        build_tfds(records, tmp_path / "raise", "synthetic")
    path, report, written = build_tfds(records, tmp_path / "skip", "synthetic", on_bad="skip")
    assert [where for where, _ in report.entries] == [f"record synthetic/{records[i]['id']}" for i in (1, 4)]
    assert len(TfdsRecords(path)) == len(written) == 4
    with pytest.raises(ValueError, match="lower-case"):
        build_tfds(records, tmp_path / "x", "My Data")
