"""The parser and rewards on the authors' released outputs and human texts (skips without them)."""

import json
from pathlib import Path

import numpy as np
import pytest

from jaxbiqa.rewards import format_reward, human_references, parse_ratings, reasoning_reward


def load_shards(folder: Path) -> list[dict]:
    records = [r for shard in sorted(folder.glob("p*.json")) for r in json.loads(shard.read_text())]
    if not records:
        pytest.skip(f"no shards in {folder}")
    return records


@pytest.mark.parametrize("model", ["v11", "v13"])
def test_parsed_rating_equals_stored_overall_score(shared_data: Path, model: str) -> None:
    records = load_shards(shared_data / "released-predictions" / model / "koniq")
    texts = [r["perception_text"] for r in records]
    stored = np.array([float(r["overall_score"]) for r in records])
    tolerant = parse_ratings(texts)
    strict = parse_ratings(texts, strict=True)
    agree, agree_strict = int((tolerant == stored).sum()), int((strict == stored).sum())
    print(f"{model} koniq: rating agreement tolerant {agree}/{len(records)}, strict {agree_strict}/{len(records)}")
    assert agree >= 0.999 * len(records)
    assert agree_strict >= 0.999 * len(records)


@pytest.mark.parametrize("model", ["v11", "v13"])
def test_format_reward_on_released_completions(shared_data: Path, model: str) -> None:
    texts = [r["perception_text"] for r in load_shards(shared_data / "released-predictions" / model / "koniq")]
    strict = format_reward()(texts, {})
    lenient = format_reward(strict=False)(texts, {})
    print(f"{model} koniq: format strict {np.mean(strict > 0):.4f}, lenient {np.mean(lenient > 0):.4f}")
    assert set(np.unique(strict).tolist()) <= {0.0, 0.5}
    assert np.mean(strict > 0) >= 0.99
    assert np.all(lenient >= strict)


def test_human_text_formats(shared_data: Path) -> None:
    q = shared_data / "q-reasoning"
    train = json.loads((q / "mixed_cot.json").read_text())
    assert sum(bool(human_references(r)) for r in train) == 482  # the annotated KonIQ training images
    test = json.loads((q / "human_test.json").read_text())
    assert all(len(human_references(r)) == 1 for r in test)
    per_annotator = [v for row in json.loads((q / "filted_data_human_eng.json").read_text()) for v in row.values()]
    assert all(len(human_references(v)) == len(v["description"]) for v in per_annotator)


def test_reasoning_reward_on_released_captions(shared_data: Path) -> None:
    human = {r["image"]: r for r in json.loads((shared_data / "q-reasoning" / "human_test.json").read_text())}
    records = [r for r in load_shards(shared_data / "released-predictions" / "v11" / "koniq") if r["image"] in human]
    batch = {f: [human[r["image"]][f] for r in records] for f in ("description", "good_aspect", "bad_aspect")}
    texts = [r["perception_text"] for r in records]
    precision = reasoning_reward(floor=0.0)(texts, batch)
    recall = reasoning_reward(measure="recall", floor=0.0)(texts, batch)
    print(f"v11 on {len(records)} Q-Reasoning test images: ROUGE-1 P {precision.mean():.3f} R {recall.mean():.3f}")
    assert len(records) == 180
    # long completions against short human texts: recall well above precision
    assert 0.0 < precision.mean() < recall.mean() < 1.0
