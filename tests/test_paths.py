"""`jaxbiqa.paths`: the same calls on a local folder and on a bucket of a real GCS API emulator."""

import os
import stat

import pytest

from jaxbiqa.paths import as_path, atomic_folder, atomic_write, is_local, local_copy, remove_leftovers


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("bucket")


def test_as_path_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(as_path("gs://b/x/y")) == "gs://b/x/y" and not is_local("gs://b/x")
    assert str(as_path("rel/f")) == str(tmp_path / "rel" / "f") and is_local("rel/f")


def test_atomic_write_replaces_whole_and_leaves_nothing_behind(root):
    path = as_path(root) / "sub" / "metrics.json"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_atomic_folder_replaces_only_when_complete(root):
    target = as_path(root) / "policy"
    atomic_write(target / "tokenizer.json", "kept")
    with atomic_folder(target) as folder:
        (folder / "model-1.bin").write_text("v1")
        (folder / "model-2.bin").write_text("v1")
    with pytest.raises(OSError, match="disk full"):
        with atomic_folder(target, stale=("model-*.bin",)) as folder:
            (folder / "model-1.bin").write_text("partial")
            raise OSError("disk full")
    assert (target / "model-1.bin").read_text() == "v1" and (target / "model-2.bin").exists()
    with atomic_folder(target, stale=("model-*.bin",)) as folder:
        (folder / "model-1.bin").write_text("v2")
    # the new file in, the stale one out, other files kept
    assert sorted(p.name for p in target.iterdir()) == ["model-1.bin", "tokenizer.json"]
    assert (target / "model-1.bin").read_text() == "v2" and (target / "tokenizer.json").read_text() == "kept"
    assert sorted(p.name for p in as_path(root).iterdir()) == ["policy"]  # no staging left behind


def test_local_copy_of_a_folder(root):
    folder = as_path(root) / "model"
    atomic_write(folder / "config.json", "{}")
    atomic_write(folder / "tokenizer.json", "[]")
    with local_copy(folder, ("*.json",)) as local:
        assert sorted(p.name for p in local.iterdir()) == ["config.json", "tokenizer.json"]
        assert (local / "config.json").read_text() == "{}"


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_remove_leftovers(tmp_path):
    (tmp_path / ".metrics.json.tmp-1234abcd").write_text("partial")
    (tmp_path / ".policy.tmp-1234abcd").mkdir()
    (tmp_path / "kept.json").write_text("{}")
    assert len(remove_leftovers(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["kept.json"]
