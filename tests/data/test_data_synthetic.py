import collections
import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from jaxbiqa.data.records import FIELDS, SEVERITIES  # noqa: E402
from jaxbiqa.data.sources import read_jsonl  # noqa: E402
from jaxbiqa.data.synthetic import (  # noqa: E402
    DISTORTION_NAMES, PHOTO_NAMES, SynthSpec, generate, quality_from_ssim,
)

SMALL = SynthSpec(seed=11, photos=("astronaut", "camera", "flower", "coins", "rocket"), crops_per_photo=2,
                  crop_size=48, types_per_crop=len(DISTORTION_NAMES))


@pytest.fixture(scope="module")
def examples():
    return generate(SMALL)


def test_deterministic_by_seed(examples):
    again = generate(SMALL)
    assert [e.record for e in again] == [e.record for e in examples]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(again, examples))
    other = generate(SynthSpec(seed=12, photos=SMALL.photos, crops_per_photo=2, crop_size=48, types_per_crop=2))
    assert [e.record["mos"] for e in other] != [e.record["mos"] for e in examples[: len(other)]]


def test_target_is_monotone_in_level_for_every_type(examples):
    per_crop = collections.defaultdict(dict)
    per_level = collections.defaultdict(list)
    for e in examples:
        if e.level:
            per_crop[(e.crop, e.distortion)][e.level] = e.record["mos"]
            per_level[(e.distortion, e.level)].append(e.record["mos"])
    assert {d for _, d in per_crop} == set(DISTORTION_NAMES)
    for key, levels in per_crop.items():
        values = [levels[level] for level in range(1, 6)]
        assert all(a >= b for a, b in zip(values, values[1:])), (key, values)
    for name in DISTORTION_NAMES:  # on average every level is strictly worse than the one before
        means = [np.mean(per_level[(name, level)]) for level in range(1, 6)]
        assert all(a > b for a, b in zip(means, means[1:])), (name, means)
    clean = [e.record["mos"] for e in examples if e.level == 0]
    assert clean and all(m == 5.0 for m in clean)
    assert all(1.0 <= e.record["mos"] <= 5.0 for e in examples)


def test_target_follows_ssim(examples):
    for e in examples:
        assert e.record["mos"] <= quality_from_ssim(e.ssim) + 1e-12
    assert quality_from_ssim(1.0) == 5.0 and quality_from_ssim(-0.2) == 1.0
    assert quality_from_ssim(0.5) < quality_from_ssim(0.6)


def test_no_photo_in_both_splits(examples):
    splits = collections.defaultdict(set)
    for e in examples:
        splits[e.crop.rsplit("_", 1)[0]].add(e.record["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {"train", "test"} == set().union(*splits.values())


def test_annotations_fill_all_fields(examples):
    for e in examples:
        r = e.record
        assert tuple(r) == FIELDS
        for field in ("description", "good_aspect", "bad_aspect", "instruction"):
            assert r[field].strip(), (r["id"], field)
        for field in ("good_impact", "bad_impact", "edit_quality", "quality"):
            assert np.isfinite(r[field])
        assert r["quality"] == pytest.approx(r["mos"] - 1) and r["edit_quality"] >= r["quality"]
        if e.level:
            assert r["severity"] == SEVERITIES[e.level - 1] and r["bad_impact"] == e.level
            assert r["distortion"] in {"blur", "noise", "compression", "darken", "brighten", "contrast", "saturation"}
        else:
            assert (r["distortion"], r["severity"]) == ("none", "none")
    saturated = [e for e in examples if e.distortion == "saturation"]
    assert saturated and not any(e.crop.startswith(("camera", "coins")) for e in saturated)  # grey photos


def test_written_set_reads_back(synth_dir):
    records = read_jsonl(synth_dir / "index.jsonl")
    info = json.loads((synth_dir / "info.json").read_text())
    assert len(records) == info["count"] == sum(info["splits"].values())
    assert all(r["dataset"] == "synthetic" and (synth_dir / "images" / f"{r['id']}.png").is_file() for r in records)
    photo_of = {r["id"]: next(p for p in PHOTO_NAMES if r["id"].startswith(p + "_")) for r in records}
    held_out = {photo_of[r["id"]] for r in records if r["split"] == "test"}
    assert held_out == set(info["test_photos"])
    assert not held_out & {photo_of[r["id"]] for r in records if r["split"] == "train"}


def test_writing_twice_gives_identical_files(tmp_path):
    from jaxbiqa.data.synthetic import write_synthetic

    spec = SynthSpec(seed=5, photos=("coffee", "moon"), crops_per_photo=1, crop_size=32, types_per_crop=1)

    def digest(folder):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    write_synthetic(tmp_path / "a", spec, progress=False)
    write_synthetic(tmp_path / "b", spec, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_seen_split_is_new_images_of_the_training_photos(examples):
    import dataclasses

    spec = dataclasses.replace(SMALL, seen_crops_per_photo=1)
    with_seen = generate(spec)
    by_split = collections.defaultdict(list)
    for e in with_seen:
        by_split[e.record["split"]].append(e)
    # train and test are what they were without the seen split
    assert [e.record for e in with_seen if e.record["split"] != "seen"] == [e.record for e in examples]
    photo_of = {e.crop: e.crop.rsplit("_", 1)[0] for e in with_seen}
    train_photos = {photo_of[e.crop] for e in by_split["train"]}
    assert {photo_of[e.crop] for e in by_split["seen"]} == train_photos  # content seen in training
    per_crop = collections.Counter(e.crop for e in with_seen)  # a seen crop has the images a train crop has
    assert {photo_of[c]: n for c, n in per_crop.items() if "seen" in c} == \
        {photo_of[e.crop]: per_crop[e.crop] for e in by_split["train"]}
    train_pixels = {hashlib.sha1(e.pixels.tobytes()).hexdigest() for e in by_split["train"]}
    assert not any(hashlib.sha1(e.pixels.tobytes()).hexdigest() in train_pixels for e in by_split["seen"])
    assert not {e.record["id"] for e in by_split["seen"]} & {e.record["id"] for e in examples}
    assert [e.record for e in generate(spec)] == [e.record for e in with_seen]  # deterministic
