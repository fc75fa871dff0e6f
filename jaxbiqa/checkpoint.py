"""Checkpoints with orbax: training state, step, RNG key, data-iterator position and the resolved config.

`Checkpointer` wraps an `orbax.checkpoint.CheckpointManager` (async saves, keep the newest N,
save every K steps). One checkpoint holds the items
* `state`: any pytree of arrays (a `TrainState`: parameters, optimizer state, counters), restored
  into a target of `jax.ShapeDtypeStruct`s that carry concrete shardings (`restore_target`), so
  the restored arrays land on the mesh exactly as they were;
* `meta`: the step, the RNG key (its raw bits and implementation) and the number of processes (JSON);
* `config`: the resolved config (JSON);
* `data`: a grain iterator's position (when an iterator is given), one file per process.
Beside the steps, `save_item` writes a pytree once per run under `<directory>/<name>` (e.g. the
GRPO reference policy, `jaxbiqa.rl.trainer`), outside the rotation of `max_to_keep`.
With several processes every process calls `save` and `restore` (orbax writes and reads each
array's shards collectively; process 0 writes the JSON items). The arrays restore on any mesh
and any number of processes; a data position only with the number of processes that saved it.
The directory may be local or remote (`gs://...`, `jaxbiqa.paths`). A step that cannot be read
(truncated files, broken metadata) raises `UnreadableCheckpoint`; `set_aside` moves it out of the
step sequence (renamed `<step>.unreadable`) so the run can resume from an earlier one. A full disk
is reported as one `OSError` naming the folder and its free space.
`PreemptionGuard` turns SIGTERM and SIGINT into a flag the training loop polls, so it can save at
the end of the current step and exit cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbiqa import interrupts
from jaxbiqa.config import UserError, to_dict
from jaxbiqa.paths import PathLike, as_path, is_local


class Restored(NamedTuple):
    step: int
    state: Any                  # the restored pytree, shaped and sharded like the target
    key: jax.Array | None       # the RNG key saved with the state (typed or raw, as it was)
    config: dict | None         # the resolved config saved with it
    data_restored: bool         # whether a data iterator's position was restored


class UnreadableCheckpoint(UserError):
    """A saved step whose files cannot be read back (truncated, missing or broken metadata)."""

    def __init__(self, step: int, directory: Any, cause: BaseException):
        self.step, self.directory, self.cause = step, directory, cause
        reason = _first_line(cause)
        super().__init__(f"checkpoint step {step} in {directory} cannot be read ({type(cause).__name__}: {reason[:300]})")


def _first_line(error: BaseException) -> str:
    text = str(error).split(" See full TensorStore details")[0].strip()
    return text.splitlines()[0] if text else type(error).__name__


# what orbax says when the checkpoint is whole but the target to restore into has other shapes or leaves
_MISMATCH = ("is not compatible with the stored shape", "tree structures do not match")


def _target_mismatch(error: BaseException) -> bool:
    return isinstance(error, ValueError) and any(text in str(error) for text in _MISMATCH)


def _disk_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def _reporting_disk_full(directory: Any, what: str) -> Iterator[None]:
    """Turns a full disk anywhere under `what` into one OSError naming the folder and its free space."""
    try:
        yield
    except Exception as error:
        if not _disk_full(error):
            raise
        free = ""
        if is_local(directory):
            free = f", {shutil.disk_usage(directory).free / 2**20:.1f} MiB free"
        raise OSError(errno.ENOSPC, f"disk full while {what} in {directory}{free}") from None


def restore_target(tree: Any, shardings: Any = None) -> Any:
    """`jax.ShapeDtypeStruct` leaves with concrete shardings: the target `Checkpointer.restore` needs.

    `tree` holds arrays or ShapeDtypeStructs (e.g. from `jax.eval_shape`); shardings come from the
    matching `shardings` tree, else from each leaf's own `.sharding` (arrays), else the default
    device. Always concrete: a checkpoint written on another mesh or by several processes is
    resharded to them (without one orbax would use the saved layout, which need not exist here).
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if shardings is None:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None) or default, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s or default), tree, shardings)


def _key_to_json(key: jax.Array | None) -> dict | None:
    if key is None:
        return None
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return {"impl": str(jax.random.key_impl(key)), "data": np.asarray(jax.random.key_data(key)).tolist()}
    return {"impl": None, "data": np.asarray(key).tolist(), "dtype": str(key.dtype)}


def _key_from_json(saved: dict | None) -> jax.Array | None:
    if saved is None:
        return None
    if saved["impl"] is None:
        return jax.numpy.asarray(np.asarray(saved["data"], saved["dtype"]))
    return jax.random.wrap_key_data(np.asarray(saved["data"], np.uint32), impl=saved["impl"])


def _config_dict(config: Any) -> dict | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return to_dict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}")


class Checkpointer:
    """Save / restore training checkpoints in `directory` (created if missing).

    `save_interval_steps` makes `save` a no-op between multiples of it (unless forced);
    `max_to_keep` deletes the oldest beyond N (None keeps all); with `async_save` a save returns
    once the arrays are copied to host memory and the files are written in the background
    (so the saved buffers may be donated right after). Call `wait()` or `close()` before exiting.
    """

    def __init__(self, directory: PathLike, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                 save_interval_minutes: float = 0.0, async_save: bool = True):
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        if save_interval_minutes < 0:
            raise ValueError(f"save_interval_minutes must be >= 0, got {save_interval_minutes}")
        self.directory = as_path(directory)
        self.save_interval_steps = save_interval_steps
        self.save_interval_seconds = save_interval_minutes * 60
        self._last_save = time.monotonic()
        if jax.process_index() == 0 and self.directory.is_dir():
            for leftover in self.directory.glob("*.orbax-checkpoint-tmp*"):  # of a save killed midway
                leftover.rmtree()
        # the interval is applied here: orbax would also save the first step it sees
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=1,
                                               enable_async_checkpointing=async_save, create=True)
        import grain  # slow to import; needed only once checkpoints are in use

        handlers = dict(state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
                        config=ocp.JsonCheckpointHandler(), data=grain.checkpoint.CheckpointHandler())
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    @classmethod
    def from_section(cls, section: Any, output_dir: PathLike) -> "Checkpointer":
        """From a `jaxbiqa.config.CheckpointSection` (directory "" = `<output_dir>/checkpoints`)."""
        directory = section.directory or as_path(output_dir) / "checkpoints"
        return cls(directory, max_to_keep=section.max_to_keep, save_interval_steps=section.save_interval_steps,
                   save_interval_minutes=section.save_interval_minutes, async_save=section.async_save)

    def due(self, step: int) -> bool:
        """Whether `step` is a multiple of `save_interval_steps`, or `save_interval_minutes` have
        passed since the last save (when set)."""
        late = self.save_interval_seconds > 0 and time.monotonic() - self._last_save >= self.save_interval_seconds
        return step % self.save_interval_steps == 0 or late

    def save(self, step: int, state: Any, *, key: jax.Array | None = None, data_iterator: Any = None,
             config: Any = None, force: bool = False) -> bool:
        """Save at `step` when it is `due` (or `force`); False when skipped or already saved."""
        if (not force and not self.due(step)) or step in self.manager.all_steps():
            return False
        items = dict(state=ocp.args.StandardSave(state),
                     meta=ocp.args.JsonSave({"step": int(step), "key": _key_to_json(key),
                                             "processes": jax.process_count()}))
        if config is not None:
            items["config"] = ocp.args.JsonSave(_config_dict(config))
        if data_iterator is not None:
            import grain
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        with _reporting_disk_full(self.directory, f"saving step {step}"):
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._last_save = time.monotonic()
        return saved

    def restore(self, target: Any, *, step: int | None = None, data_iterator: Any = None) -> Restored:
        """Restore `step` (default: the latest) into `target` (see `restore_target`); sets
        `data_iterator` to its saved position when the checkpoint has one."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                    f"(have {sorted(self.manager.all_steps())})")
        try:
            saved = set(self.manager.item_metadata(step).keys())  # the items on disk
            restore_data = data_iterator is not None and "data" in saved
            if restore_data:  # the process count it was saved with, before anything is restored
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as error:
            raise UnreadableCheckpoint(step, self.directory, error) from error
        items = dict(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        if "config" in saved:
            items["config"] = ocp.args.JsonRestore()
        if restore_data:
            import grain
            processes = meta.get("processes", 1)
            if processes != jax.process_count():
                raise UserError(f"checkpoint step {step} in {self.directory} holds the data position of {processes} "
                                f"process(es), this run has {jax.process_count()}: resume with {processes}, or "
                                "restore without a data iterator (the arrays restore on any number of processes)")
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            if _target_mismatch(error):  # the checkpoint is whole; the model it is restored into differs
                raise UserError(f"checkpoint step {step} in {self.directory} does not fit this run's train state "
                                f"(a different model or config?): {_first_line(error)}") from error
            raise UnreadableCheckpoint(step, self.directory, error) from error
        config = out["config"] if "config" in items else None
        return Restored(int(out.meta["step"]), out.state, _key_from_json(out.meta["key"]), config, restore_data)

    def restore_latest(self, target: Any, *, data_iterator: Any = None) -> Restored | None:
        """The latest checkpoint restored into `target`, or None when there is none (a fresh run)."""
        if self.latest_step() is None:
            return None
        return self.restore(target, data_iterator=data_iterator)

    def set_aside(self, step: int, reason: str) -> None:
        """Take `step` out of the step sequence: its folder is renamed `<step>.<reason>` (kept for
        inspection; neither restored nor rotated). Called on every process; process 0 renames."""
        self.wait()
        if jax.process_index() == 0:
            source, target = self.directory / str(step), self.directory / f"{step}.{reason}"
            if target.exists():
                target.rmtree()
            source.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"jaxbiqa-set-aside-{step}")
        self.manager.reload()

    def save_item(self, name: str, tree: Any) -> None:
        """Save the pytree `tree` as `<directory>/<name>`, beside the step checkpoints and never
        deleted by their rotation: for state written once per run rather than every step.

        Synchronous (on disk when this returns) and atomic (written to a temporary folder that is
        renamed when complete), replacing an earlier item of that name. Every process calls it
        (each array's shards are written collectively). `name` must not be a step number.
        """
        if name.isdigit():
            raise ValueError(f"item name {name!r} would read as a step")
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(self.directory / name, args=ocp.args.StandardSave(tree), force=True)

    def has_item(self, name: str) -> bool:
        """Whether `save_item(name, ...)` completed in this directory."""
        return (self.directory / name).is_dir()

    def restore_item(self, name: str, target: Any) -> Any:
        """The pytree `save_item(name, ...)` wrote, restored into `target` (see `restore_target`)."""
        if not self.has_item(name):
            raise FileNotFoundError(f"no item {name!r} in {self.directory}")
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            return checkpointer.restore(self.directory / name, args=ocp.args.StandardRestore(target))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        with _reporting_disk_full(self.directory, "saving a checkpoint"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PreemptionGuard:
    """While active (a context manager), SIGTERM and SIGINT set a flag instead of killing the process.

    The loop checks `should_stop()` after each step, then saves (`force=True`), waits for the save
    and returns; the flag is the process's `jaxbiqa.interrupts` request, which a running decode
    loop also polls. A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once. With several JAX
    processes `should_stop()` is true on all of them as soon as any one was signalled, so they save
    the same step together. `enabled=False` leaves the signals alone. The previous handlers come
    back on exit.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), *, enabled: bool = True):
        self.signals = signals if enabled else ()
        self._previous: dict[int, Any] = {}
        self.received: str | None = None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and interrupts.stop_requested():
            raise KeyboardInterrupt("second interrupt: stopping without saving")
        self.received = signal.Signals(signum).name
        interrupts.request_stop()

    @property
    def requested(self) -> bool:
        """Whether this process received one of the signals."""
        return interrupts.stop_requested()

    def should_stop(self) -> bool:
        """Whether any process received one of the signals (a collective call with several processes)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered from the main thread (signal handlers live there)")
        interrupts.clear()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        interrupts.clear()
