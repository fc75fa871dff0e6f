"""Real damage to files on disk, as a save killed mid-write could leave it (for the recovery tests)."""

from pathlib import Path


def truncate_array_files(step_dir: Path) -> None:
    """Cut every data file of an orbax step's `state` item to half its size."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)
