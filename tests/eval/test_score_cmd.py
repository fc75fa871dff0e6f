"""`jaxbiqa score`: real photographs (scikit-image) rated by a tiny random model, one entry per image
as JSON or a readable table; unreadable files reported by name before any model is loaded."""

from __future__ import annotations

import json

import pytest
from eval_setup import overrides, shared_root
from PIL import Image

from jaxbiqa.cli import main
from jaxbiqa.eval.evaluate import Evaluator
from jaxbiqa.eval.score_cmd import check_images, format_entries

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def checkpoint():
    """The shared random model's Hugging Face folder and the overrides scoring needs."""
    root = shared_root()
    sets = [s for s in overrides(root / "model", root / "synthetic") if s.startswith(("rollout.", "data.max_pixels",
                                                                                     "model.dtype"))]
    return root / "hf", sets


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.camera()).save(folder / "camera.jpg", quality=90)  # grey JPEG
    Image.fromarray(skimage_data.coffee()).resize((300, 400)).save(folder / "coffee_portrait.png")
    return [folder / "astronaut.png", folder / "camera.jpg", folder / "coffee_portrait.png"]


def _args(checkpoint, sets, *extra):
    args = ["score", *extra, "--checkpoint", str(checkpoint)]
    for assignment in sets:
        args += ["--set", assignment]
    return args


def test_scores_real_photographs_as_json_and_as_a_table(checkpoint, photos, tmp_path, capsys):
    hf, sets = checkpoint
    written = tmp_path / "scores.json"
    assert main(_args(hf, sets, *map(str, photos), "--json", "--output", str(written))) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["image"] for e in entries] == [str(p) for p in photos]
    # each keeps its proportions at 3,136 pixels: the square photos 56x56, the 300x400 portrait 28x56
    assert [e["size"] for e in entries] == ["56x56", "56x56", "28x56"]
    for entry in entries:
        assert set(entry) == {"image", "size", "caption", "reasoning", "rating", "caption_rating",
                              "caption_think_rating", "completion", "model"}
        assert entry["model"] == {"kind": "hf", "path": str(hf)}  # which weights rated it
        assert isinstance(entry["completion"], str) and entry["completion"]
        assert entry["rating"] is None or 1.0 <= entry["rating"] <= 5.0
    assert json.loads(written.read_text()) == entries

    compiled = Evaluator.compile_count()
    assert main(_args(hf, sets, *map(str, photos))) == 0  # a readable table
    assert Evaluator.compile_count() == compiled  # the two programs (one per image size) are reused
    table = capsys.readouterr().out
    assert table.startswith(f"{photos[0]}: rating ") and "\n  caption: " in table and "\n  reasoning: " in table
    assert all(f"\n{p}: rating " in table for p in photos[1:])


def test_unreadable_images_are_named_before_loading_a_model(photos, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not a JPEG at all")
    (tmp_path / "empty.png").write_bytes(b"")
    with open(photos[0], "rb") as handle:
        (tmp_path / "truncated.png").write_bytes(handle.read()[:2000])
    paths = [str(photos[0]), str(tmp_path / "broken.jpg"), str(tmp_path / "empty.png"),
             str(tmp_path / "missing.png"), str(tmp_path / "truncated.png")]
    # no checkpoint given either: the images are checked first, so the errors are about them only
    assert main(["score", *paths, "--checkpoint", str(tmp_path / "no_such_model")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("jaxbiqa score: error: cannot read image ") for line in err)
    assert "broken.jpg: corrupt image" in err[0] and "empty.png: empty file" in err[1]
    assert "missing.png: missing file" in err[2] and "truncated.png: truncated image" in err[3]
    shapes, errors = check_images([str(photos[1])], max_pixels=10**6)
    assert not errors and shapes == [(512, 512)]  # the decoded size only: the pixels are not kept
    shapes, errors = check_images([str(photos[1])], max_pixels=512 * 512 - 1)
    assert errors == [f"cannot read image {photos[1]}: image too large: 512x512 = 262,144 pixels is over the "
                      "decompression-bomb limit data.max_image_pixels=262,143; raise it if you trust the file"]


def test_without_a_model_it_says_how_to_get_one(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    assert main(["score", str(photos[0])]) == 2
    assert "no model: pass --checkpoint PATH or --config RECIPE" in capsys.readouterr().err


def test_table_wraps_long_texts_and_marks_missing_parts():
    entry = {"image": "x.png", "caption": "word " * 60, "reasoning": None, "rating": 3.5, "caption_rating": None,
             "caption_think_rating": 2.25}
    text = format_entries([entry], width=60)
    lines = text.splitlines()
    assert lines[0] == "x.png: rating 3.50  (from its caption alone: n/a; caption + reasoning: 2.25)"
    assert all(len(line) <= 60 for line in lines[1:]) and lines[1].startswith("  caption: word")
    assert lines[-1] == "  reasoning: (no reasoning in the output)"


def test_the_image_check_keeps_no_pixels(tmp_path):
    """The probe: `score` kept every full-resolution decoded image until the end (~250 MB for an
    81-Mpx image). The check before the model loads decodes one image at a time and keeps its size:
    its peak memory is that of one image, not of all of them."""
    import tracemalloc

    import numpy as np

    side, count = 1500, 6  # 6.75 MB per decoded RGB image
    paths = []
    for i in range(count):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((side, side, 3), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    tracemalloc.start()
    try:
        shapes, errors = check_images(paths, max_pixels=10**8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not errors and shapes == [(side, side)] * count
    assert peak < 2.5 * side * side * 3, f"peak {peak / 1e6:.1f} MB: more than one decoded image held at once"
