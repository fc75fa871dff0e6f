"""Fixtures of the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic set: 4 photos, 2 crops each, 2 distortion types per crop (88 images)."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from jaxbiqa.data.synthetic import SynthSpec, write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    spec = SynthSpec(seed=3, photos=("chelsea", "coins", "china", "moon"), crops_per_photo=2, crop_size=64,
                     types_per_crop=2)
    write_synthetic(out, spec, progress=False)
    return out
