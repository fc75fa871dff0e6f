"""Orbax checkpoints: exact round trip of a sharded training state with optimizer, step, RNG, data
position and config; keep-N and save intervals (steps and minutes); unreadable steps reported and set
aside; a full disk in one line; SIGTERM and SIGINT save before a clean exit; the same on a bucket."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from damage import truncate_array_files

from jaxbiqa.checkpoint import Checkpointer, PreemptionGuard, UnreadableCheckpoint, restore_target
from jaxbiqa.config import Config, to_dict

REPO = Path(__file__).resolve().parents[1]


def _small_state(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(6), jnp.bfloat16),
            "count": jnp.asarray(seed, jnp.int32)}


def _iterator():
    return iter(grain.MapDataset.range(40).shuffle(seed=3).batch(4).to_iter_dataset())


def test_round_trip_on_mesh_with_optimizer_rng_data_and_config(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "rl"))
    from tiny_models import grpo_batch, random_model, tiny_config
    from jaxbiqa.config import GRPOSection, OptimSection
    from jaxbiqa.rl.step import UpdateStep, grpo_loss
    from jaxbiqa.sharding import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = random_model(tiny_config())
    step = UpdateStep(model, grpo_loss(GRPOSection(beta=0.0)), OptimSection(learning_rate=1e-2), 10, mesh=mesh)
    state = step.init(model)
    state, _ = step(state, grpo_batch())
    key = jax.random.key(7)
    data = _iterator()
    for _ in range(3):
        next(data)
    config = Config(name="roundtrip", seed=5)

    with Checkpointer(tmp_path / "ckpt", async_save=True) as ckpt:
        assert ckpt.save(1, state, key=key, data_iterator=data, config=config)
        expected_next = next(data)
        saved = jax.tree.map(np.asarray, state)
        state, _ = step(state, grpo_batch(seed=1))  # donates the saved buffers while the save may be in flight

    with Checkpointer(tmp_path / "ckpt") as ckpt:
        fresh = _iterator()
        restored = ckpt.restore_latest(step.abstract_state(model), data_iterator=fresh)
    assert restored.step == 1 and restored.data_restored
    assert restored.config == to_dict(config)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(key))
    np.testing.assert_array_equal(next(fresh), expected_next)
    leaves, target = jax.tree.leaves(restored.state), jax.tree.leaves(step.abstract_state(model))
    assert len(leaves) == len(jax.tree.leaves(saved)) and len(leaves) > 40
    for got, want, abstract in zip(leaves, jax.tree.leaves(saved), target):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)
        assert got.sharding == abstract.sharding
    sharded = [x for x in leaves if len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated]
    assert sharded, "some parameters should be split over the mesh"
    assert int(restored.state.opt_state[1][0].count) == 1  # AdamW's count came back
    # the restored state trains on exactly like the original did
    again, _ = step(restored.state, grpo_batch(seed=1))
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # a target without shardings (no mesh here) restores the mesh's checkpoint onto one device
    unplaced = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), step.abstract_state(model))
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        single = ckpt.restore(restore_target(unplaced), step=1)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for got, want in zip(jax.tree.leaves(single.state), jax.tree.leaves(saved)):
        assert got.sharding == device
        np.testing.assert_array_equal(np.asarray(got), want)


def test_restore_target_from_arrays_and_raw_keys(tmp_path):
    state = _small_state(1)
    raw_key = jax.random.PRNGKey(3)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, state, key=raw_key)
        restored = ckpt.restore(restore_target(state))
    assert restored.config is None and not restored.data_restored
    np.testing.assert_array_equal(np.asarray(restored.key), np.asarray(raw_key))
    assert restored.key.dtype == raw_key.dtype
    for name in state:
        assert restored.state[name].dtype == state[name].dtype
        np.testing.assert_array_equal(np.asarray(restored.state[name]), np.asarray(state[name]))


def test_keep_n_interval_and_force(tmp_path):
    with Checkpointer(tmp_path / "keep", max_to_keep=2) as ckpt:
        for i in range(1, 5):
            ckpt.save(i, _small_state(i))
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        restored = ckpt.restore(restore_target(_small_state()), step=3)
        assert int(restored.state["count"]) == 3
    with Checkpointer(tmp_path / "interval", save_interval_steps=3, max_to_keep=None) as ckpt:
        saved = [i for i in range(1, 8) if ckpt.save(i, _small_state(i))]
        assert ckpt.save(8, _small_state(8), force=True)
        assert not ckpt.save(8, _small_state(8), force=True)  # already there: not saved twice
        ckpt.wait()
        assert saved == [3, 6] and ckpt.all_steps() == [3, 6, 8]


def test_missing_checkpoints(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_latest(restore_target(_small_state())) is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(restore_target(_small_state()))
        ckpt.save(1, _small_state())
        ckpt.wait()
        with pytest.raises(FileNotFoundError, match="step 9"):
            ckpt.restore(restore_target(_small_state()), step=9)


def test_item_saved_once_beside_the_steps(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert not ckpt.has_item("reference")
        ckpt.save_item("reference", _small_state(4))
        for i in range(1, 5):
            ckpt.save(i, _small_state(i))
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4] and ckpt.has_item("reference")  # not a step, not rotated out
        ckpt.save_item("reference", _small_state(5))  # replaces it
        with pytest.raises(ValueError, match="step"):
            ckpt.save_item("7", _small_state())
        with pytest.raises(FileNotFoundError, match="other"):
            ckpt.restore_item("other", restore_target(_small_state()))
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 4
        restored = ckpt.restore_item("reference", restore_target(_small_state()))
    for name, value in _small_state(5).items():
        assert restored[name].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(value))


def test_guard_restores_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested and not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested and guard.should_stop() and guard.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_asks_to_stop_and_twice_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.should_stop() and guard.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second interrupt"):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_disabled_guard_leaves_the_signals_alone():
    before = signal.getsignal(signal.SIGINT)
    with PreemptionGuard(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before


def test_time_based_save_interval(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=1000, save_interval_minutes=0.002, async_save=False) as ckpt:
        assert not ckpt.save(1, _small_state())  # neither interval reached
        time.sleep(0.15)
        assert ckpt.save(2, _small_state())      # 0.12 s passed
        assert not ckpt.save(3, _small_state())  # the clock restarted at the save
        assert ckpt.all_steps() == [2]


@pytest.mark.parametrize("damage", ["truncated array file", "broken metadata"])
def test_unreadable_step_is_reported_and_set_aside(tmp_path, damage):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, _small_state(step), force=True)
    if damage == "truncated array file":
        truncate_array_files(tmp_path / "2")
    else:
        (tmp_path / "2" / "state" / "_METADATA").write_text("{broken")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(UnreadableCheckpoint, match=f"step 2 in {tmp_path} cannot be read") as caught:
            ckpt.restore(restore_target(_small_state()))
        assert "\n" not in str(caught.value) and caught.value.step == 2
        ckpt.set_aside(2, "unreadable")
        assert ckpt.all_steps() == [1] and (tmp_path / "2.unreadable").is_dir()
        restored = ckpt.restore(restore_target(_small_state()))
        assert restored.step == 1
        assert ckpt.save(2, _small_state(5), force=True)  # the step can be saved again


def test_a_target_that_does_not_fit_is_not_called_corrupt(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _small_state(), force=True)
        wrong = {**_small_state(), "w": jnp.zeros((4, 5), jnp.float32)}
        with pytest.raises(ValueError, match="step 1 .* does not fit this run's train state"):
            ckpt.restore(restore_target(wrong))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs the right to mount; skipped where there is none)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_naming_the_folder_and_free_space(tiny_disk):
    big = {"w": jax.random.normal(jax.random.key(0), (1024, 1024))}  # 4 MiB (incompressible) on a 1 MiB disk
    with pytest.raises(OSError) as caught:
        with Checkpointer(tiny_disk / "ckpt", async_save=True) as ckpt:
            ckpt.save(1, big, force=True)
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC and "\n" not in message
    assert "disk full while saving" in message and str(tiny_disk / "ckpt") in message and "MiB free" in message


def test_checkpoints_in_a_bucket(bucket):
    directory = f"{bucket}/run/checkpoints"
    with Checkpointer(directory, async_save=True) as ckpt:
        for step in (1, 2):
            ckpt.save(step, _small_state(step), key=jax.random.key(step), force=True)
    with Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        restored = ckpt.restore(restore_target(_small_state()))
    assert restored.step == 2
    for name, value in _small_state(2).items():
        np.testing.assert_array_equal(np.asarray(restored.state[name]), np.asarray(value))


CHILD = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp
    from jaxbiqa.checkpoint import Checkpointer, PreemptionGuard

    with Checkpointer(sys.argv[1], save_interval_steps=1000) as ckpt, PreemptionGuard() as guard:
        state, step = {"x": jnp.zeros(3)}, 0
        while True:
            step += 1
            state = {"x": state["x"] + 1}
            if step == 2:
                print("ready", flush=True)
            if guard.should_stop():
                ckpt.save(step, state, force=True)
                ckpt.wait()
                print("saved", step, flush=True)
                break
            time.sleep(0.02)
    sys.exit(0)
""")


def test_sigterm_saves_then_exits_cleanly(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env=env, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0
    saved_step = int(out.split()[-1])
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [saved_step]
        restored = ckpt.restore(restore_target({"x": jnp.zeros(3)}))
    np.testing.assert_array_equal(np.asarray(restored.state["x"]), np.full(3, saved_step, np.float32))


def test_temporary_folders_of_a_killed_save_are_removed(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _small_state(), force=True)
    leftover = tmp_path / "2.orbax-checkpoint-tmp-1234567"  # what a save killed mid-write leaves
    (leftover / "state").mkdir(parents=True)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1]
    assert not leftover.exists()
