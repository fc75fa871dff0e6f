"""The trainer's evaluation hook: held-out ratings through the two-pass rollout, greedy.

For every record of the eval split: the pass-1 rating with the image (`overall_score`) and the
pass-2 rating from the model's own caption alone (`caption_score`, when the rollout is two-pass
and the caption could be split out; else null). Predictions are written in jaxbiqa's JSON-lines
prediction schema (`jaxbiqa.eval.predictions`: dataset, image, gt_score, overall_score,
caption_score, perception_text, caption_answer_text), so `jaxbiqa eval-predictions FILE` reads
them; the metrics (SRCC / PLCC / KRCC / RMSE with `jaxbiqa.eval.metrics.iqa_metrics`, against the
1-5 target `mos_norm`) come back per column, with the image-to-caption gap.

Batches keep one shape: a short last batch is filled with copies of its last record, whose
outputs are dropped, so the rollout compiles once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbiqa.rewards.parse import parse_ratings
from jaxbiqa.rollout.options import RolloutConfig

PREDICTIONS_FILE = "predictions.jsonl"


def greedy_rollout_config(config: RolloutConfig) -> RolloutConfig:
    """`config` with both passes greedy and one sample per prompt (deterministic evaluation)."""
    return dataclasses.replace(config, pass1=config.pass1.replace(greedy=True, num_samples=1),
                               pass2=config.pass2.replace(greedy=True, num_samples=1))


def fill_batch(batch: Mapping[str, np.ndarray], size: int) -> tuple[dict[str, np.ndarray], int]:
    """`batch` grown to `size` rows with copies of its last row; returns it and the real row count."""
    rows = len(next(iter(batch.values())))
    if rows > size:
        raise ValueError(f"an eval batch of {rows} rows exceeds the batch size {size}")
    if rows == size:
        return dict(batch), rows
    return {k: np.concatenate([v, np.repeat(v[-1:], size - rows, axis=0)]) for k, v in batch.items()}, rows


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _score(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evaluate(run_rollout: Callable[[Mapping[str, np.ndarray]], Any], batches: Iterable[Mapping[str, np.ndarray]],
             batch_size: int, out_path: str | Path, max_examples: int = 0) -> dict[str, Any]:
    """Run `run_rollout(batch) -> RolloutResult` over `batches`, write the predictions file and
    return the metrics (`image`, `caption` columns as `IQAMetrics.as_dict()`, `gap`, counts)."""
    from jaxbiqa.eval.metrics import gap, iqa_metrics

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    overall, caption, targets = [], [], []
    with open(out_path, "w", encoding="utf-8") as handle:
        for batch in batches:
            if max_examples and len(targets) >= max_examples:
                break
            full, rows = fill_batch(batch, batch_size)
            rows = min(rows, max_examples - len(targets)) if max_examples else rows
            result = jax.device_get(run_rollout(full))
            first = parse_ratings(result.pass1_texts[:rows])
            second = (parse_ratings(result.pass2_texts[:rows]) if result.pass2_texts is not None
                      else np.full(rows, np.nan))
            if result.has_caption is not None:
                second = np.where(result.has_caption[:rows], second, np.nan)
            for i in range(rows):
                record = {"dataset": _text(batch["dataset"][i]), "image": _text(batch["id"][i]),
                          "gt_score": float(batch["mos"][i]), "overall_score": _score(first[i]),
                          "caption_score": _score(second[i]), "perception_text": result.pass1_texts[i]}
                if result.pass2_texts is not None and (result.has_caption is None or result.has_caption[i]):
                    record["caption_answer_text"] = result.pass2_texts[i]
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            overall.extend(first)
            caption.extend(second)
            targets.extend(np.asarray(batch["mos_norm"][:rows], np.float64))
    if len(targets) < 3:
        raise ValueError(f"evaluation needs at least 3 records, got {len(targets)}")
    image_metrics = iqa_metrics(overall, targets)
    out: dict[str, Any] = {"n": len(targets), "image": image_metrics.as_dict(), "predictions": str(out_path)}
    if np.isfinite(caption).sum() >= 3:
        caption_metrics = iqa_metrics(caption, targets)
        out["caption"] = caption_metrics.as_dict()
        out["gap"] = gap(image_metrics, caption_metrics)
    return out
