"""Test-wide set-up: 8 simulated CPU devices (before jax is imported) and shared fixtures."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from gcs_emulator import start as start_gcs_emulator  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The authors' real data beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS API emulator on localhost for this test session (`tests/gcs_emulator.py`); its
    `bucket()` makes a fresh `gs://` bucket."""
    yield from start_gcs_emulator(tmp_path_factory.mktemp("gcs"))


@pytest.fixture
def bucket(gcs) -> str:
    return gcs.bucket()
