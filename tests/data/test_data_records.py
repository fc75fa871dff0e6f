import math

import pytest

from jaxbiqa.data.records import (
    FIELDS, MOS_SCALES, BadRecordError, MosScale, RecordGuard, SkipReport, check_unique_ids, image_path,
    make_record, parse_float, scale_from_data, summarise,
)


def test_koniq_scale_is_the_methods_formula():
    scale = MOS_SCALES["koniq"]
    for mos in (3.91176, 50.0, 77.3836206897, 88.38889):
        assert scale.normalise(mos) == pytest.approx(1 + 4 * (mos - 3.91176) / (88.38889 - 3.91176))
    assert scale.normalise(3.91176) == pytest.approx(1.0)
    assert scale.normalise(88.38889) == pytest.approx(5.0)


def test_lower_is_better_scale_is_flipped():
    csiq = MOS_SCALES["csiq"]
    assert csiq.lower_is_better
    assert csiq.normalise(0.0) == pytest.approx(5.0)
    assert csiq.normalise(1.0) == pytest.approx(1.0)
    assert csiq.normalise(0.25) > csiq.normalise(0.75)


def test_scale_from_data_uses_min_and_max():
    scale = scale_from_data([2.0, math.nan, 7.0, 4.5])
    assert (scale.low, scale.high) == (2.0, 7.0)
    assert scale.normalise(4.5) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no spread"):
        scale_from_data([3.0, 3.0])


def test_make_record_fills_every_field_and_normalises():
    record = make_record(id="a.jpg", image="/x/a.jpg", dataset="kadid", split="test", mos=4.93,
                         scale=MOS_SCALES["kadid"], description="a cat")
    assert tuple(record) == FIELDS
    assert record["mos_norm"] == pytest.approx(5.0)
    assert record["description"] == "a cat" and record["bad_aspect"] == ""
    assert math.isnan(record["quality"])
    with pytest.raises(ValueError, match="unknown record field"):
        make_record(id="a", image="a", dataset="d", split="s", colour="red")


def test_mos_outside_the_scale_is_a_bad_record():
    with pytest.raises(BadRecordError, match="outside .* wrong score column"):
        make_record(id="a", image="a", dataset="koniq", split="train", mos=4.2, scale=MosScale(10.0, 90.0))


@pytest.mark.parametrize("value,message", [(None, "missing"), ("", "missing"), ("nan", "not a finite"),
                                           ("abc", "not a number"), (True, "not a number")])
def test_parse_float_rejects_bad_values(value, message):
    with pytest.raises(BadRecordError, match=message):
        parse_float(value, "f.csv line 3")


def test_guard_raises_with_location_or_skips_and_reports():
    with pytest.raises(BadRecordError, match=r"^f.csv line 4: id 'x': broken$"):
        with RecordGuard("raise")("f.csv line 4"):
            raise BadRecordError("id 'x'", "broken")
    report = SkipReport()
    guard = RecordGuard("skip", report)
    done = []
    for i in range(3):
        with guard(f"f.csv line {i}"):
            if i == 1:
                raise BadRecordError("id 'y'", "missing value")
            done.append(i)
    assert done == [0, 2]
    assert report.entries == [("f.csv line 1: id 'y'", "missing value")]
    assert "skipped 1 bad record" in report.summary()
    with pytest.raises(ValueError, match="raise' or 'skip"):
        RecordGuard("ignore")


def test_bad_record_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(BadRecordError("record d/a.png", "missing file: a.png")))
    assert (err.where, err.reason) == ("record d/a.png", "missing file: a.png")
    assert str(err) == "record d/a.png: missing file: a.png"


def test_duplicate_ids_are_bad_records():
    records = [make_record(id=i, image=i, dataset="d", split="s") for i in ("a", "b", "a")]
    wheres = [f"labels.csv line {n}" for n in (2, 3, 4)]
    with pytest.raises(BadRecordError, match="^labels.csv line 4: id 'a': duplicate id: also at labels.csv line 2$"):
        check_unique_ids(records, RecordGuard("raise"), wheres)
    report = SkipReport()
    kept = check_unique_ids(records, RecordGuard("skip", report), wheres)
    assert [r["id"] for r in kept] == ["a", "b"] and len(report) == 1


def test_image_path_rejects_escapes(tmp_path):
    assert image_path(tmp_path, "sub/a.png", "w") == str(tmp_path / "sub" / "a.png")
    for bad in ("../a.png", "sub/../../a.png", "/etc/passwd"):
        with pytest.raises(BadRecordError, match="escapes the dataset root"):
            image_path(tmp_path, bad, "labels.csv line 2")
    with pytest.raises(BadRecordError, match="empty image path"):
        image_path(tmp_path, " ", "w")


def test_summarise_counts():
    records = [make_record(id=str(i), image="x", dataset="d", split="train" if i else "test", mos=float(i),
                           mos_norm=1.0 + i) for i in range(3)]
    summary = summarise(records)
    assert summary["count"] == 3 and summary["splits"] == {"test": 1, "train": 2}
    assert summary["mos_range"] == [0.0, 2.0] and summary["mos_norm_range"] == [1.0, 3.0]


def test_data_section_rejects_bad_values():
    from jaxbiqa.config import DataSection

    DataSection()
    cases = (({"global_batch_size": 0}, "global_batch_size=0"),
             ({"min_pixels": 10_000, "max_pixels": 5_000}, "min_pixels"),
             ({"num_epochs": 0}, "num_epochs=0"), ({"on_bad_record": "ignore"}, "on_bad_record"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            DataSection(**bad)
