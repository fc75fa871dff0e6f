"""`jaxbiqa eval`: a Hugging Face folder and a jaxbiqa run directory (orbax checkpoints written as the
trainer writes them) evaluated end to end; parameters restored exactly, the step chosen, the saved
config used; clear errors for paths that are not checkpoints."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from eval_setup import TEST_IMAGES, overrides, read_jsonl, shared_root
from flax import nnx

from jaxbiqa.checkpoint import Checkpointer
from jaxbiqa.cli import main
from jaxbiqa.config import OptimSection, load_config
from jaxbiqa.eval.policy import CheckpointError, find_checkpoint, load_policy
from jaxbiqa.models.build import build_policy
from jaxbiqa.rl.step import UpdateStep
from jaxbiqa.sft import sft_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(a fresh folder, the shared tiny model folder, its overrides)."""
    shared = shared_root()
    return tmp_path_factory.mktemp("eval_cmd"), shared / "model", overrides(shared / "model", shared / "synthetic")


@pytest.fixture(scope="module")
def run_dir(tiny):
    """A run directory as the trainer leaves it: config.json, and checkpoints/ with a warm-start
    state at step 2 (a TrainState) and a GRPO state at step 5 ({"train", "reference"}), whose
    parameters differ (the lm_head doubled)."""
    root, _, sets = tiny
    run = root / "run"
    config = load_config(None, [*sets, f"output_dir={run}"])
    model = build_policy(config.model, seed=7)  # not the config's seed: a restore must not fall back on it
    step_fn = UpdateStep(model, sft_loss(), OptimSection(), 10)
    state = step_fn.init(model, copy=True)
    doubled = state._replace(params=jax.tree.map(lambda x: x * 2 if x.ndim == 2 else x, state.params))
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"checkpoint": {"directory": ""}}))
    with Checkpointer(run / "checkpoints", async_save=False) as checkpointer:
        checkpointer.save(2, state, key=jax.random.key(0), config=config, force=True)
        checkpointer.save(5, {"train": doubled, "reference": state.params}, key=jax.random.key(0), config=config,
                          force=True)
    return run, step_fn.model(state), step_fn.model(doubled)


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(model))]


def test_run_directory_restores_the_latest_or_a_chosen_step(run_dir):
    run, at_2, at_5 = run_dir
    assert find_checkpoint(run) == ("orbax", run / "checkpoints", None)
    assert find_checkpoint(run / "checkpoints" / "2") == ("orbax", run / "checkpoints", 2)

    latest = load_policy(str(run), None)
    assert latest.source == {"kind": "orbax", "path": str(run / "checkpoints"), "step": 5}
    for restored, saved in zip(_leaves(latest.model), _leaves(at_5), strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert latest.config.rollout.pass1.max_new_tokens == 20  # the config saved with the checkpoint

    chosen = load_policy(str(run / "checkpoints" / "2"), None, ["data.global_batch_size=2"])
    assert chosen.source["step"] == 2 and chosen.config.data.global_batch_size == 2  # --set applies on top
    for restored, saved in zip(_leaves(chosen.model), _leaves(at_2), strict=True):
        np.testing.assert_array_equal(restored, saved)

    with pytest.raises(CheckpointError, match="does not fit the model built from its config"):
        load_policy(str(run), None, ["model.lora_rank=4"])


def test_eval_of_a_run_directory_writes_predictions_and_metrics(run_dir, capsys):
    run, _, _ = run_dir
    assert main(["eval", "--checkpoint", str(run), "--decoding", "greedy", "--max-examples", "4",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    out = run / "eval" / "generate_greedy_step5"
    rows = read_jsonl(out / "predictions.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 4 and metrics["n"] == 4 and metrics["checkpoint"]["step"] == 5
    assert metrics["settings"]["decoding"] == "greedy" and metrics["eval_split"] == "test"
    assert re.search(r"^synthetic$", printed, re.M) and "caption only" in printed and "4 images in" in printed


def test_eval_of_a_hugging_face_folder_reads_back(tiny, tmp_path, capsys):
    sets = tiny[2]
    hf = shared_root() / "hf"
    assert find_checkpoint(hf) == ("hf", hf, None)
    out = tmp_path / "out"
    args = ["eval", "--checkpoint", str(hf), "--out", str(out), "--no-progress"]
    for assignment in sets:
        args += ["--set", assignment]
    assert main(args) == 0
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == TEST_IMAGES and metrics["checkpoint"] == {"kind": "hf", "path": str(hf)}
    assert metrics["settings"]["decoding"] == "sampled" and metrics["settings"]["seed"] == 42
    assert main(["eval-predictions", str(out / "predictions.jsonl"), "--human", str(out / "human.json"),
                 "--logistic", "--json", str(tmp_path / "back.json")]) == 0
    assert json.loads((tmp_path / "back.json").read_text())["models"][0]["datasets"] == metrics["datasets"]


def test_paths_that_are_not_checkpoints(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--checkpoint", str(tmp_path / "empty")]) == 2
    assert "not a Hugging Face checkpoint" in capsys.readouterr().err
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        find_checkpoint(tmp_path / "fresh")


def test_qalign_mode_needs_single_token_level_words(tiny, capsys):
    sets = tiny[2]
    args = ["eval", "--mode", "qalign", "--no-progress"]
    for assignment in sets:
        args += ["--set", assignment]
    assert main(args) == 2  # the demo's BPE splits "excellent"
    assert "quality level 'excellent' is not a single token" in capsys.readouterr().err


@pytest.mark.slow  # one more evaluation (about 20 s on 2 cores)
def test_eval_counts_skipped_records_and_names_random_weights(tiny, tmp_path, capsys):
    """The probes: eval's metrics.json had no count of skipped records, and a model folder without
    weights was evaluated as `{"kind": "config"}`; random weights are now asked for and said."""
    from PIL import Image

    _, model, sets = tiny
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    with open(tmp_path / "index.jsonl", "w") as index:
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (56, 56, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
            index.write(json.dumps({"image": f"images/{i}.png", "id": str(i), "dataset": "toy", "split": "test",
                                    "mos_norm": 1.0 + i}) + "\n")
    (tmp_path / "images" / "3.png").write_bytes(b"not a PNG")
    args = ["eval", "--decoding", "greedy", "--out", str(tmp_path / "out"), "--no-progress"]
    for assignment in [*sets, f'data.eval=["jsonl:{tmp_path / "index.jsonl"}"]', "data.on_bad_record=skip"]:
        args += ["--set", assignment]
    assert main(args) == 0
    assert "4 images in" in capsys.readouterr().out  # and "(1 bad records skipped)" after the time
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == len(read_jsonl(tmp_path / "out" / "predictions.jsonl")) == 4
    assert metrics["skipped_records"] == 1 and "3.png" in metrics["skipped_examples"][0]
    assert metrics["checkpoint"] == {"kind": "random", "path": str(model), "seed": 0}
    # without model.init=random the same folder is an error naming what it holds
    args[args.index("model.init=random")] = "model.init=pretrained"
    assert main(args) == 2
    assert f"{model}: no weights" in capsys.readouterr().err
