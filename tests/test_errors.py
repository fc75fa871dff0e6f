"""The command line's error boundary (`jaxbiqa.cli`): bad input, bad config, missing or corrupt
files, unwritable paths and a full disk are one line naming what and where, with exit status 2;
`--debug` (or JAXBIQA_DEBUG=1) shows the traceback; a bug keeps its traceback.

Each case is a probe of issue 18 that used to end in a traceback (or, for a model folder without
weights, in a silently random model). None of them compiles anything: each fails while reading."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxbiqa import cli
from jaxbiqa.config import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "rl"))
from trainer_helpers import make_assets, write_config_file, write_image_records  # noqa: E402


def one_error_line(capsys, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith(f"jaxbiqa {command}: error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The tiny model folder (config.json + tokenizer), a four-image JSON-lines set and a config file."""
    root = tmp_path_factory.mktemp("errors")
    model_dir, _ = make_assets(root)
    data = root / "data"
    write_image_records(data, 4)
    config = write_config_file(root / "tiny.py", model_dir, data, root / "out")
    return root, model_dir, data, config


def _train(config: Path, *sets: str) -> int:
    args = ["train", "--config", str(config), "--quiet"]
    for assignment in sets:
        args += ["--set", assignment]
    return cli.main(args)


def _copy_data(assets, name: str) -> Path:
    root, _, data, _ = assets
    copy = root / name
    shutil.copytree(data, copy)
    return copy


def test_data_inspect_and_build_on_a_bad_record(assets, tmp_path, capsys):
    bad = _copy_data(assets, "bad_labels")
    lines = (bad / "index.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"mos_norm": 2.0', '"mos_norm": "abc"')
    (bad / "index.jsonl").write_text("\n".join(lines) + "\n")
    assert cli.main(["data", "inspect", f"jsonl:{bad / 'index.jsonl'}"]) == 2
    assert one_error_line(capsys, "data").endswith("index.jsonl line 2 field mos_norm: not a number: 'abc'")
    assert cli.main(["data", "build", "--source", "jsonl", "--root", str(bad / "index.jsonl"),
                     "--out", str(tmp_path / "tfds")]) == 2
    assert "index.jsonl line 2 field mos_norm: not a number" in one_error_line(capsys, "data")


def test_train_on_bad_label_records(assets, capsys):
    root, _, _, config = assets
    bad = _copy_data(assets, "bad_train_labels")
    (bad / "index.jsonl").write_text((bad / "index.jsonl").read_text().replace('"mos_norm": 3.0', '"mos_norm": 7.0'))
    assert _train(config, f'data.train=["jsonl:{bad / "index.jsonl"}"]', f"output_dir={root / 'labels'}") == 2
    assert "index.jsonl line 3: id '2': out of range: mos_norm 7.0 is outside [1.0, 5.0]" in one_error_line(
        capsys, "train")


def test_train_on_a_corrupt_image(assets, capsys):
    root, _, _, config = assets
    bad = _copy_data(assets, "bad_images")
    (bad / "images" / "2.png").write_bytes(b"not a PNG at all")
    assert _train(config, f'data.train=["jsonl:{bad / "index.jsonl"}"]', f"output_dir={root / 'images'}") == 2
    line = one_error_line(capsys, "train")
    assert "record toy/2: corrupt image" in line and str(bad / "images" / "2.png") in line


def test_train_into_an_unwritable_output_dir(assets, capsys):
    _, _, data, config = assets
    blocker = assets[0] / "a_file"
    blocker.write_text("")
    assert _train(config, f'data.train=["jsonl:{data / "index.jsonl"}"]', f"output_dir={blocker / 'run'}") == 2
    assert one_error_line(capsys, "train").endswith(f"Not a directory: {blocker / 'run'}")


def test_train_from_a_corrupt_or_missing_safetensors_file(assets, capsys):
    root, model_dir, data, config = assets
    folder = root / "corrupt_model"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    sets = [f'data.train=["jsonl:{data / "index.jsonl"}"]', f"model.path={folder}", "model.init=pretrained"]
    assert _train(config, *sets, f"output_dir={root / 'corrupt'}") == 2
    assert f"{folder / 'model.safetensors'}: not a readable safetensors file" in one_error_line(capsys, "train")
    # a Hugging Face folder with PyTorch weights only: an error naming them, not a random model
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 16)
    assert _train(config, *sets, f"output_dir={root / 'bin'}") == 2
    line = one_error_line(capsys, "train")
    assert f"{folder}: no weights (model.safetensors or model.safetensors.index.json)" in line
    assert "PyTorch weights (pytorch_model.bin) are not read" in line and "model.init=random" in line
    for command in (["eval", "--checkpoint", str(folder)], ["score", str(data / "images" / "0.png"), "--config",
                                                             str(config), "--set", f"model.path={folder}",
                                                             "--set", "model.init=pretrained"]):
        assert cli.main(command) == 2
        assert f"{folder}: no weights" in one_error_line(capsys, command[0])


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "none.py")
    assert cli.main(["config", "--config", missing]) == 2
    assert one_error_line(capsys, "config").endswith(f"config file {missing} not found")
    with pytest.raises(ConfigError, match="not found"):
        cli.main(["config", "--debug", "--config", missing])
    monkeypatch.setenv("JAXBIQA_DEBUG", "1")
    with pytest.raises(ConfigError, match="not found"):
        cli.main(["config", "--config", missing])
    monkeypatch.delenv("JAXBIQA_DEBUG")

    class Buggy:  # a command with a bug: its exception is not a user error
        configure = staticmethod(lambda parser: None)

        @staticmethod
        def run(args):
            return {}["missing key"]

    monkeypatch.setattr(cli, "_load", lambda name: Buggy)
    with pytest.raises(KeyError):
        cli.main(["config"])


def synth(out: Path, crop_size: int) -> list[str]:
    """`jaxbiqa data synth` of one photo: six PNG images of crop_size^2 pixels."""
    return ["data", "synth", "--photos", "moon", "--crops-per-photo", "1", "--crop-size", str(crop_size),
            "--types-per-crop", "1", "--out", str(out)]


def _cli_env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def test_a_file_size_limit_is_one_line(tmp_path):
    # a file-size limit of one block; SIGXFSZ ignored, so a write past it fails with EFBIG
    synth_args = " ".join(synth(tmp_path / "synth", 96))
    command = f"trap '' XFSZ; ulimit -f 1; exec {sys.executable} -m jaxbiqa.cli {synth_args}"
    result = subprocess.run(["sh", "-c", command], env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("jaxbiqa data: error: File too large") and str(tmp_path / "synth") in line
    assert "Traceback" not in result.stderr


def test_a_full_disk_is_one_line(tmp_path):
    """A real full disk: a 16 KiB tmpfs in a private mount namespace (skipped where that is not allowed);
    six 96 x 96 PNG images (about 37 KB) do not fit."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mount = tmp_path / "small"
    mount.mkdir()
    mount_it = f"mount -t tmpfs -o size=16k tmpfs {mount}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount_it], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr[-200:]}")
    command = f"{mount_it} && exec {sys.executable} -m jaxbiqa.cli {' '.join(synth(mount / 'synth', 96))}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], env=_cli_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("jaxbiqa data: error: No space left on device (disk full): ") and str(mount) in line
