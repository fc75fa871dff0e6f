"""`jaxbiqa demo` pipeline, shrunk by overrides of the demo_cpu recipe to a run of seconds: every stage
runs and writes its outputs (synthetic set, training log and checkpoints, predictions that
`eval-predictions` reads back, a report whose links resolve, the summary), and a second run reuses
the finished training and evaluation instead of redoing them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jaxbiqa.cli import main
from jaxbiqa.demo import DEMO_CONFIG, SETS, SUMMARY
from jaxbiqa.demo_assets import DemoModelSpec, ensure_demo_model

pytestmark = pytest.mark.slow  # the whole demo, shortened

pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

TINY = DemoModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                     vision_depth=1, vision_hidden=32, vision_intermediate=64, vision_heads=2)


def tiny_overrides(root: Path) -> list[str]:
    """The demo recipe at toy size: a 2-layer model, 18 training images of 56 x 56 pixels (18 more of
    new crops of their photos: set (a); 6 of a held-out photo: set (b)), 2 warm-start steps, one GRPO
    epoch of 3 steps with 2 samples per prompt, short completions."""
    model = ensure_demo_model(root / "model", TINY)
    data = root / "synthetic"
    return [f"model.path={model}", "model.init=random", "model.scan_layers=false", "model.remat=false",
            f'data.train=["synthetic:{data}"]', f'data.eval=["synthetic:{data}"]', "data.synthetic_num_photos=4",
            "data.synthetic_crops_per_photo=1", "data.synthetic_seen_crops_per_photo=1", "data.synthetic_types_per_crop=1", "data.synthetic_crop_size=56",
            "data.min_pixels=3136", "data.max_pixels=3136", "data.global_batch_size=6",
            "data.num_epochs=1", "sft.steps=2", "rollout.pass1.num_samples=2",
            "rollout.pass1.max_new_tokens=48", "rollout.pass2.max_new_tokens=16", "rollout.pass1.prompt_buckets=[128]",
            "checkpoint.save_interval_steps=2",
            "checkpoint.async_save=false"]


def test_demo_runs_every_stage_and_reuses_finished_work(tmp_path, capsys):
    out = tmp_path / "runs" / "demo"
    args = ["demo", "--config", DEMO_CONFIG, "--out", str(out), "--no-progress"]
    for assignment in tiny_overrides(tmp_path):
        args += ["--set", assignment]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert all(f"{label} (greedy decoding):" in printed for label in SETS.values()) and "wall time:" in printed

    summary = json.loads((out / SUMMARY).read_text())
    assert set(summary["figures"]) == set(SETS)
    for label, images in (("in_distribution", 18), ("unseen_photos", 6)):  # (a) new crops; (b) the held-out photo
        assert set(summary["figures"][label]) == {"overall_score", "reasoning_score", "caption_score"}
        image = summary["figures"][label]["overall_score"]
        assert image["n"] + image["n_invalid"] == images
    assert len(summary["targets"]) == 4 and all(isinstance(v, bool) for v in summary["targets"].values())
    assert summary["training"]["eval"]["sft"]["n"] == 18  # the warm start evaluated on set (a), beside GRPO's
    assert set(summary["warm_start"]) == {"image", "caption"} and set(summary["grpo_gains"]) == {"image_srcc",
                                                                                                "score_reward"}
    assert set(summary["wall_time_s"]) == {"data", "model", "training", "evaluation", "report", "total"}
    assert (out / "train_log.jsonl").is_file() and (out / "checkpoints").is_dir()
    assert "reward/total_mean" in summary["rewards"]

    predictions = out / "eval" / "demo_greedy" / "seen" / "predictions.jsonl"
    metrics = json.loads((predictions.parent / "metrics.json").read_text())
    back = tmp_path / "back.json"
    assert main(["eval-predictions", str(predictions), "--human", str(predictions.parent / "human.json"),
                 "--logistic", "--json", str(back)]) == 0
    assert json.loads(back.read_text())["models"][0]["datasets"] == metrics["datasets"]

    report = Path(summary["report"])
    text = report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert any("training" in link for link in links) and any("predictions" in link for link in links)
    assert all((report.parent / link).is_file() for link in links)
    assert all(label in text for label in SETS)  # both sets, side by side
    assert Path(summary["html"]).is_file()
    capsys.readouterr()

    assert main(args) == 0  # everything is there: nothing is trained or evaluated again
    err = capsys.readouterr().err
    assert "training already finished" in err and "already in" in err and "report up to date" in err
    again = json.loads((out / SUMMARY).read_text())
    assert again["figures"] == summary["figures"] and again["wall_time_s"]["training"] < 1.0
