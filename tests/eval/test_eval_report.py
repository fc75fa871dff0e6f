"""The report: its links resolve, its tables hold the metrics computed directly from the predictions."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from jaxbiqa.eval.alignment import rouge1_alignment
from jaxbiqa.eval.metrics import gap, iqa_metrics
from jaxbiqa.eval.report import build_report, metric_row, num

WORDS = ["sharp", "blurry", "noisy", "bright", "dark", "colourful", "washed", "clean", "grainy", "soft"]


def completion(rng, rating: float, fence: bool = False) -> str:
    caption = " ".join(rng.choice(WORDS, 6))
    extra = " ```json``` " if fence else ""
    return (f"<caption>{caption}{extra}</caption><think>it looks {rng.choice(WORDS)}</think>"
            f"<answer>{{\"rating\": {rating:.2f}}}</answer>")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A JSON-lines prediction file with a MOS and a DMOS dataset, human texts and a training log."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("inputs")
    rows, human, columns = [], [], {}
    for dataset, n in (("synth", 30), ("csiq", 12)):
        gt = rng.uniform(0, 1, n) if dataset == "csiq" else rng.uniform(1, 5, n)
        quality = 1 - gt if dataset == "csiq" else (gt - 1) / 4
        image = 1 + 4 * quality + rng.normal(0, 0.3, n)
        think = image + rng.normal(0, 0.4, n)
        caption = image + rng.normal(0, 0.8, n)
        image[3], caption[5] = np.nan, np.nan  # unparsable outputs
        lowest = int(np.argmin(gt))
        for i in range(n):
            name = f"{dataset}/{dataset}_{i:02d}.png"
            rows.append({"dataset": dataset, "image": name, "gt_score": float(gt[i]),
                         "overall_score": None if np.isnan(image[i]) else float(image[i]),
                         "reasoning_score": float(think[i]),
                         "caption_score": None if np.isnan(caption[i]) else float(caption[i]),
                         "perception_text": completion(rng, float(np.nan_to_num(image[i])), fence=i == lowest)})
            if dataset == "synth" and i % 3 == 0:
                human.append({"image": name, "description": " ".join(rng.choice(WORDS, 8)),
                              "good_aspect": {"answer": "clean"}, "bad_aspect": "a bit soft"})
        columns[dataset] = (gt, image, think, caption)
    predictions = root / "predictions.jsonl"
    predictions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    human_path = root / "human.json"
    human_path.write_text(json.dumps(human))
    log = root / "train_log.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "reward": {"score": 0.1 * s}, "kl": 0.01}) for s in range(20)))
    texts = {r["image"]: r["perception_text"] for r in rows}
    return dict(predictions=predictions, human=human_path, log=log, columns=columns, texts=texts, human_list=human)


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory):
    return build_report(inputs["predictions"], tmp_path_factory.mktemp("report"), training_log=inputs["log"],
                        human=inputs["human"], samples=2, html=True)


def test_markdown_links_resolve_to_the_plots(report):
    text = report.markdown.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(report.plots) == 2 * 3 + 1  # per dataset: scatter + 2 image-vs-caption; training
    for link in links:
        assert not link.startswith("/") and link.startswith("plots/")
        assert (report.markdown.parent / link).is_file()
    assert sorted(report.markdown.parent / link for link in links) == sorted(report.plots)


def test_html_embeds_the_same_plots(report):
    page = report.html.read_text()
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(sources) == len(report.plots)
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in sources]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert sorted(embedded) == sorted(p.read_bytes() for p in report.plots)


def test_tables_hold_the_directly_computed_metrics(report, inputs):
    text = report.markdown.read_text()
    labels = ("image", "caption+think", "caption only")
    for dataset, (gt, *preds) in inputs["columns"].items():
        lower = dataset == "csiq"  # detected by name
        section = text.split(f"## {dataset}\n", 1)[1].split("\n## ", 1)[0]
        direct = [iqa_metrics(p, gt, lower_is_better=lower) for p in preds]
        for label, m in zip(labels, direct):
            assert "| " + " | ".join(metric_row(label, m)) + " |" in section
            assert report.metrics["datasets"][dataset]["columns"][
                {"image": "overall_score", "caption+think": "reasoning_score", "caption only": "caption_score"}[label]
            ]["srcc"] == pytest.approx(m.srcc)
        for label, m in zip(labels[1:], direct[1:]):
            g = gap(direct[0], m)
            assert f"| image - {label} | {num(g['plcc'], True)} | {num(g['srcc'], True)} |" in section
        assert f"| {dataset} | {num(direct[0].srcc)} | {num(direct[0].plcc)} |" in text  # summary row
    assert direct[0].n_invalid == 1 and direct[0].srcc > 0.5  # csiq: DMOS negated, so positive


def test_rouge_and_samples(report, inputs):
    text = report.markdown.read_text()
    synth = {k: v for k, v in inputs["texts"].items() if k.startswith("synth/")}
    human = {h["image"]: " ".join([h["description"], h["good_aspect"]["answer"], h["bad_aspect"]])
             for h in inputs["human_list"]}
    a = rouge1_alignment(synth, human)
    assert a.n == 10
    assert f"| {a.n} | {num(a.precision)} | {num(a.recall)} | {num(a.f)} | 0 |" in text
    assert report.metrics["datasets"]["synth"]["alignment"]["f"] == pytest.approx(a.f)
    assert "ROUGE-1: no image of this dataset has a human text." in text  # csiq
    # two samples per dataset: the lowest and the highest target, each completion in a code block
    for dataset, (gt, *_) in inputs["columns"].items():
        for i in (int(np.argmin(gt)), int(np.argmax(gt))):
            image = f"{dataset}/{dataset}_{i:02d}.png"
            assert f"Pass-1 completion for {image}:" in text
            assert inputs["texts"][image] in text
    assert text.count("Pass-1 completion for") == 4
    assert "````text\n" in text  # a completion holding ``` gets a longer fence


def test_training_section(report):
    text = report.markdown.read_text()
    assert "| reward/score | 20 | 0.050 | 1.850 |" in text  # mean of the first / last 2 of 0.1 * step
    assert report.metrics["training"]["kl"] == {"n": 20, "first": 0.01, "last": 0.01}


def test_report_without_optional_inputs(inputs, tmp_path):
    out = build_report(inputs["predictions"], tmp_path, samples=0)
    text = out.markdown.read_text()
    assert out.html is None and "## Training" not in text and "ROUGE-1" not in text
    assert "Pass-1 completion" not in text and len(out.plots) == 6
    assert json.loads(out.metrics_json.read_text()) == out.metrics


def test_report_states_the_records_the_evaluation_skipped(inputs, tmp_path):
    out = build_report(inputs["predictions"], tmp_path, samples=0, skipped_records={"in_distribution": 2})
    assert "Bad records skipped by the evaluation: in_distribution: 2." in out.markdown.read_text()
    assert json.loads(out.metrics_json.read_text())["skipped_records"] == {"in_distribution": 2}
