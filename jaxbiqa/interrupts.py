"""The process's request to stop: set by the signal handler of `checkpoint.PreemptionGuard`, read
by the training loop between steps and, through a host callback every few steps, by the decode
loop (`rollout.sampler`), so that a pre-emption notice does not wait for a long rollout to end."""

from __future__ import annotations

import threading

import numpy as np

_requested = threading.Event()


def request_stop() -> None:
    _requested.set()


def clear() -> None:
    _requested.clear()


def stop_requested() -> bool:
    return _requested.is_set()


def poll() -> np.ndarray:
    """`stop_requested()` as the boolean array a host callback returns."""
    return np.asarray(_requested.is_set())
