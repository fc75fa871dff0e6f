"""Paths anywhere, and writes that never leave half a file.

Every folder and file a run reads or keeps (output dirs, checkpoints, logs, evaluation outputs,
model weights) goes through `etils.epath`, the path type orbax and the JAX stack use: a local path
or a URI of an object store (`gs://bucket/run`; also `s3://`, `az://` where fsspec has the
backend). `gs://` is read and written by gcsfs (the `gcs` extra) with the credentials of the
environment (Application Default Credentials, `GOOGLE_APPLICATION_CREDENTIALS`, or a TPU VM's
service account); `STORAGE_EMULATOR_HOST` points gcsfs at an emulator, and orbax's tensorstore
reads `TENSORSTORE_GCS_HTTP_URL` (`use_emulator` sets both).

Writes a user keeps are atomic: a reader (or a crash) sees the old content or the new, never a
part. Locally that is a temporary sibling renamed over the target; an object store uploads an
object whole or not at all. Files are created with the process's umask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
    """`path` as an `epath.Path`: URIs as they are, local paths made absolute."""
    if isinstance(path, epath.Path) and not is_local(path):
        return path
    text = os.fspath(path)
    return epath.Path(text) if "://" in text else epath.Path(os.path.abspath(text))


def is_local(path: PathLike) -> bool:
    """Whether `path` is on this machine's file system (not a URI such as gs://)."""
    return "://" not in os.fspath(path)


def _temporary_sibling(path: epath.Path) -> epath.Path:
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"


def atomic_write(path: PathLike, data: str | bytes) -> epath.Path:
    """Write `data` (text as UTF-8) to `path` atomically, creating its folder; returns the path."""
    path = as_path(path)
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.write_bytes(payload)  # one object upload: whole or nothing
        return path
    temporary = _temporary_sibling(path)
    try:
        with open(temporary, "wb") as f:  # open() honours the umask (mkstemp would make it 0600)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
    """Every file under `source` to the same place under `target` (epath refuses `**` globs on
    object stores, so the walk is by folder; copies within one store are server-side)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            _copy_tree(item, target / item.name)
        else:
            item.copy(target / item.name, overwrite=True)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def atomic_folder(path: PathLike, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """A fresh local folder to fill; when the block ends without an error its files replace their
    namesakes in `path` and the files of `path` matching the `stale` globs that it did not write
    are removed (other files of `path` stay). On an error `path` is left as it was.

    Everything is written before anything is replaced: locally the files are moved in by renames
    from a temporary sibling; for an object store the block fills a local staging folder (writers
    such as safetensors and transformers take local paths only), uploaded to a temporary prefix and
    copied over server-side once complete.
    """
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if is_local(path):
            staging = Path(_temporary_sibling(path))
            staging.mkdir()
            stack.callback(shutil.rmtree, staging, ignore_errors=True)
        else:
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxbiqa-"))) / path.name
            staging.mkdir()
        yield staging
        written = _files(staging)
        path.mkdir(parents=True, exist_ok=True)
        if is_local(path):
            for name in written:
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, path / name)
        else:
            uploaded = _temporary_sibling(path)
            try:
                _copy_tree(epath.Path(staging), uploaded)
                _copy_tree(uploaded, path)
            finally:
                uploaded.rmtree(missing_ok=True)
        for pattern in stale:
            for old in path.glob(pattern):
                if old.relative_to(path).as_posix() not in written and not old.is_dir():
                    old.unlink()


def follow_umask(path: PathLike) -> None:
    """Give a local file that its writer created 0600 (e.g. safetensors) the mode `open()` would."""
    if is_local(path):
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(path, 0o666 & ~mask)


def remove_leftovers(folder: PathLike) -> list[epath.Path]:
    """Remove the temporary siblings that `atomic_write` / `atomic_folder` leave when a process
    dies mid-write; returns what was removed."""
    folder = as_path(folder)
    if not folder.is_dir():
        return []
    removed = [item for item in folder.glob(".*.tmp-*")]
    for item in removed:
        item.rmtree(missing_ok=True) if item.is_dir() else item.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def local_copy(path: PathLike, patterns: tuple[str, ...] = ("*",)) -> Iterator[Path]:
    """`path` (a file or a folder's files matching `patterns`) as a local path: itself when it is
    local, else a temporary copy deleted after the block. For readers that take local files only
    (safetensors' memory map, transformers' tokenizer and image processor)."""
    path = as_path(path)
    if is_local(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="jaxbiqa-") as staging:
        target = Path(staging) / path.name
        if path.is_dir():
            target.mkdir()
            for pattern in patterns:
                for item in path.glob(pattern):
                    if not item.is_dir():
                        item.copy(epath.Path(target / item.name), overwrite=True)
        else:
            path.copy(epath.Path(target), overwrite=True)
        yield target


def use_emulator(url: str) -> None:
    """Point gcsfs and tensorstore (orbax) at a GCS API emulator at `url` (e.g. fake-gcs-server)."""
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
