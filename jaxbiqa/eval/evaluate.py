"""Batched evaluation of a policy through the rollout engine (method.md section 7).

Per image, the training rollout (`jaxbiqa.rollout.Rollout`, one compiled program) runs
* pass 1: image + the method's prompt -> `<caption>…</caption><think>…</think><answer>…</answer>`,
  one sample;
* pass 2, twice, text only, split at two points (both sets of prompts spliced on device from the
  pass-1 tokens and decoded together as one batch of 2B rows): once from the pass-1 text before
  `<think>` (the caption: `caption_score`) and once from the text before `<answer>` (caption +
  think: `reasoning_score`).
Decoding is the authors' sampling (temperature 1, top-k 50, top-p 0.95, seed 42) or greedy; batch
b draws with `fold_in(key(seed), b)`. Shapes are static: every batch holds images of one size
(the pipeline cuts a batch where the size changes), is padded to `batch_size` rows (a short one
with copies of its last row, whose outputs are dropped) and its prompts to the pass-1 bucket, so
the program compiles once per image size (and bucket) and never again (`Evaluator.compile_count`).

Ratings are read with `jaxbiqa.parse.parse_rating` (tolerant by default, the authors' strict
regex with `strict_parse`); an unparsable output, or a pass 2 skipped because no caption could be
split out, is stored as null. The predictions file (`predictions.jsonl`) follows the jaxbiqa
JSON-lines schema of `jaxbiqa.eval.predictions`: `dataset`, `image` (the record id), `gt_score`
(the dataset's own MOS / DMOS, `mos`; `mos_norm` alongside), `overall_score`, `reasoning_score`,
`caption_score`, `perception_text` (pass 1), `reasoning_text` (pass 2 from caption + think) and
`caption_answer_text` (pass 2 from the caption), so `jaxbiqa eval-predictions` reads it back to the
same figures. Records without any target are written to `predictions_no_target.jsonl` (same keys,
no `gt_score`) and only count for ROUGE. The rows are written as they come to
`predictions.jsonl.partial` and renamed when the evaluation completes; an evaluation that fails
or is stopped (`should_stop`) leaves the `.partial` file, which `eval-predictions` does not read.
The output folder may be local or `gs://...` (staged on this machine, uploaded at the end).

Metrics per dataset, in `jaxbiqa eval-predictions --json` layout: for each of the three ratings
PLCC / SRCC / KRCC / RMSE raw and PLCC / RMSE after the logistic fit (`metrics.iqa_metrics`), the
image-to-caption gaps, and ROUGE-1 P/R/F of the pass-1 captions against the records' human texts
(description, good and bad aspect) where the records have them; those texts are also written as
`human.json`, so `eval-predictions predictions.jsonl --human human.json` reproduces the ROUGE.
With `data.on_bad_record="skip"`, the records the pipeline skipped are counted in metrics.json
(`skipped_records`, the first few named in `skipped_examples`) when `evaluate` gets the SkipReport
that `eval_pipeline` fills.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from etils import epath

from jaxbiqa.config import EvalSection, RolloutSection
from jaxbiqa.data.human_text import HUMAN_FIELDS, human_text
from jaxbiqa.data.records import SkipReport
from jaxbiqa.eval.alignment import rouge1_alignment
from jaxbiqa.eval.metrics import gap, iqa_metrics, is_lower_is_better
from jaxbiqa.eval.predictions import SCORE_COLUMNS, json_safe
from jaxbiqa.parse import caption_text, parse_rating, tag_content
from jaxbiqa.paths import PathLike, as_path, atomic_write, is_local
from jaxbiqa.rollout.batch import PromptBatch
from jaxbiqa.rollout.engine import Rollout

PREDICTIONS_FILE = "predictions.jsonl"
NO_TARGET_FILE = "predictions_no_target.jsonl"
HUMAN_FILE = "human.json"
METRICS_FILE = "metrics.json"
PARTIAL = ".partial"  # the suffix of rows written by an evaluation that has not completed
SKIPPED_EXAMPLES = 10  # skipped records named in metrics.json


class BatchOutput(NamedTuple):
    """Texts of one evaluated batch (host); the pass-2 fields are None without pass 2."""

    pass1_texts: list[str]
    caption_texts: list[str] | None        # pass 2 from the text before <think>
    reasoning_texts: list[str] | None      # pass 2 from the text before <answer>
    has_caption: np.ndarray | None         # [B] bool: a caption was split out (else its pass 2 is ignored)
    has_reasoning: np.ndarray | None
    interrupted: bool                      # a stop request ended the decoding early: the texts are unfinished


class Evaluator:
    """The compiled evaluation of one batch: the training rollout (`jaxbiqa.rollout.Rollout`) with
    one sample per prompt, this decoding, and pass 2 split at `<think>` and at `<answer>`.

    `processor` is a `jaxbiqa.processing.Processor` (its tokenizer decodes, its `pass2_text`
    renders the pass-2 prompt); `vocab_size` is the model's vocabulary.
    """

    SPLITS = ("think", "answer")  # caption only, caption + think

    def __init__(self, processor, rollout: RolloutSection, vocab_size: int, settings: EvalSection = EvalSection()):
        two_pass = settings.two_pass and rollout.two_pass
        config = dataclasses.replace(rollout, pass1=settings.sampling(rollout.pass1),
                                     pass2=settings.sampling(rollout.pass2), two_pass=two_pass)
        self.rollout = Rollout.from_processor(config, processor, vocab_size, splits=self.SPLITS)
        self.pass1, self.pass2, self.two_pass = config.pass1, config.pass2, two_pass

    def prepare(self, model, batch: Mapping[str, np.ndarray]) -> PromptBatch:
        """The pass-1 prompt batch of a data batch (`data.pipeline.Pass1Preprocess` entries stacked)."""
        pixels = np.asarray(batch["pixel_values"])
        grids = np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
        return self.rollout.prepare(model, batch["input_ids"], batch["attention_mask"],
                                    pixels.reshape(-1, pixels.shape[-1]), grids)

    def __call__(self, model, prompts: PromptBatch, key: jax.Array) -> BatchOutput:
        result = self.rollout(model, prompts, key)
        if result.pass2 is None:
            return BatchOutput(result.pass1_texts, None, None, None, None, result.interrupted)
        (caption, has_caption), (reasoning, has_reasoning) = (result.split_texts(s) for s in range(2))
        return BatchOutput(result.pass1_texts, caption, reasoning, has_caption, has_reasoning, result.interrupted)

    @staticmethod
    def compile_count() -> int:
        """Compiled variants of the evaluation program so far (one per image size, bucket and settings)."""
        return Rollout.compile_count()


# ---------------------------------------------------------------- host side: batches and records

def fill_batch(batch: Mapping[str, Any], size: int) -> tuple[dict[str, np.ndarray], int]:
    """`batch` grown to `size` rows with copies of its last row; returns it and the real row count."""
    rows = len(next(iter(batch.values())))
    if rows > size:
        raise ValueError(f"a batch of {rows} rows exceeds the evaluation batch size {size}")
    out = {k: np.asarray(v) for k, v in batch.items()}
    if rows < size:
        out = {k: np.concatenate([v, np.repeat(v[-1:], size - rows, axis=0)]) for k, v in out.items()}
    return out, rows


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def completion_parts(text: str) -> dict[str, Any]:
    """Caption (the `<caption>` block, else the text before `<think>`), reasoning (the `<think>`
    block) and rating of a pass-1 completion; None / NaN where missing."""
    return {"caption": caption_text(text), "reasoning": tag_content(text, "think"), "rating": parse_rating(text)}


def base_record(batch: Mapping[str, np.ndarray], i: int) -> dict[str, Any]:
    """dataset, image (the record id), gt_score (the MOS as published, else `mos_norm`; left out
    when there is neither) and mos_norm of row `i`."""
    gt = _finite(batch["mos"][i]) if "mos" in batch else None
    norm = _finite(batch["mos_norm"][i]) if "mos_norm" in batch else None
    record: dict[str, Any] = {"dataset": _text(batch["dataset"][i]), "image": _text(batch["id"][i])}
    if gt is not None or norm is not None:
        record["gt_score"] = gt if gt is not None else norm
    record["mos_norm"] = norm
    return record


def prediction_rows(batch: Mapping[str, np.ndarray], out: BatchOutput, rows: int, strict: bool) -> list[dict]:
    """One prediction record per real row of an evaluated batch (schema: the module doc)."""
    records = []
    for i in range(rows):
        record = base_record(batch, i)
        record["overall_score"] = _finite(parse_rating(out.pass1_texts[i], strict=strict))
        if out.caption_texts is not None:
            for column, texts, has, key in (("reasoning_score", out.reasoning_texts, out.has_reasoning,
                                             "reasoning_text"),
                                            ("caption_score", out.caption_texts, out.has_caption,
                                             "caption_answer_text")):
                record[column] = _finite(parse_rating(texts[i], strict=strict)) if has[i] else None
                if has[i]:
                    record[key] = texts[i]
        record["perception_text"] = out.pass1_texts[i]
        human = {f: _text(batch[f][i]) for f in HUMAN_FIELDS if f in batch}
        if any(v.strip() for v in human.values()):
            record["_human"] = human
        records.append(record)
    return records


# ---------------------------------------------------------------- metrics

def dataset_metrics(name: str, rows: Sequence[Mapping[str, Any]], settings: EvalSection,
                    completions: Mapping[str, str], human: Mapping[str, str] | None) -> dict[str, Any]:
    """Every figure of one dataset, in `jaxbiqa eval-predictions --json` layout (its `datasets`
    entries): the metrics of the `rows` with a target, ROUGE-1 of `completions` (image -> pass-1
    text, rows without a target included) against `human` when given."""
    lower = is_lower_is_better(name, list(settings.lower_is_better))
    gt = np.array([r["gt_score"] for r in rows], np.float64)
    metrics = {}
    for column in SCORE_COLUMNS:
        if rows and column in rows[0]:
            pred = np.array([math.nan if r[column] is None else r[column] for r in rows], np.float64)
            metrics[column] = iqa_metrics(pred, gt, lower_is_better=lower, on_invalid=settings.on_invalid,
                                          fill_value=settings.fill_value, logistic_fit=True)
    entry: dict[str, Any] = {"lower_is_better": lower,
                             "columns": {c: m.as_dict() for c, m in metrics.items()}, "gap": {}, "notes": []}
    for column in ("reasoning_score", "caption_score"):
        if "overall_score" in metrics and column in metrics:
            entry["gap"][column] = gap(metrics["overall_score"], metrics[column])
    if human:
        entry["alignment"] = rouge1_alignment(completions, human).as_dict()
    return entry


@dataclasses.dataclass(frozen=True)
class EvalResult:
    predictions: epath.Path
    metrics_file: epath.Path
    human_file: epath.Path | None
    n: int  # images evaluated
    metrics: dict  # the content of metrics.json


class PredictionWriter:
    """Writes prediction rows as they come (`PREDICTIONS_FILE`, `NO_TARGET_FILE`, each with the
    `PARTIAL` suffix until `finish`), keeps what the metrics need, and at `finish` writes the human
    texts and the metrics. Rows go to a local folder: `out_dir` itself, or for a remote `out_dir` a
    staging folder uploaded by `finish` (and by `close` for the partial rows of a failed run)."""

    def __init__(self, out_dir: PathLike, settings: EvalSection):
        self.out_dir = as_path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self.staging = (Path(self.out_dir) if is_local(self.out_dir) else
                        Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxbiqa-eval-"))))
        self.settings = settings
        self._rows = {name: self.staging / (name + PARTIAL) for name in (PREDICTIONS_FILE, NO_TARGET_FILE)}
        for path in self._rows.values():
            path.unlink(missing_ok=True)
        self._handles = {name: open(path, "w", encoding="utf-8") for name, path in self._rows.items()}
        self.scored: dict[str, list[dict]] = {}
        self.completions: dict[str, dict[str, str]] = {}  # dataset -> image -> pass-1 text, every row
        self.human: dict[str, dict[str, str]] = {}
        self.count = self.unscored = 0
        self.finished = False

    def add(self, record: dict[str, Any]) -> None:
        texts = record.pop("_human", None)
        if texts is not None:
            self.human.setdefault(record["image"], {"image": record["image"], **texts})
        line = json.dumps(json_safe(record), ensure_ascii=False) + "\n"
        self.count += 1
        scored = self.scored.setdefault(record["dataset"], [])
        if "perception_text" in record:
            self.completions.setdefault(record["dataset"], {})[record["image"]] = record["perception_text"]
        if "gt_score" in record:
            scored.append(record)
            self._handles[PREDICTIONS_FILE].write(line)
        else:
            self.unscored += 1
            self._handles[NO_TARGET_FILE].write(line)

    def _publish(self, suffix: str = "") -> None:
        """The rows' files under their names (+ `suffix`): renamed in place, or uploaded."""
        for handle in self._handles.values():
            handle.close()
        for name, path in self._rows.items():
            if name == NO_TARGET_FILE and not self.unscored:
                path.unlink(missing_ok=True)
                (self.out_dir / name).unlink(missing_ok=True)
                continue
            if is_local(self.out_dir):
                os.replace(path, self.staging / (name + suffix))
            else:
                atomic_write(self.out_dir / (name + suffix), path.read_bytes())

    def finish(self, extra: Mapping[str, Any] | None = None) -> EvalResult:
        if not self.count:
            raise ValueError("evaluation saw no records (an empty eval split?)")
        self._publish()
        human_file = None
        references = {image: human_text(fields) for image, fields in self.human.items()}
        if self.human:
            human_file = atomic_write(self.out_dir / HUMAN_FILE,
                                      json.dumps(list(self.human.values()), indent=1, ensure_ascii=False) + "\n")
        datasets = {}
        for name in sorted(self.scored):
            completions = self.completions.get(name, {})
            texts = {image: references[image] for image in completions if image in references}
            datasets[name] = dataset_metrics(name, self.scored[name], self.settings, completions, texts or None)
        metrics = json_safe({"settings": dataclasses.asdict(self.settings), **dict(extra or {}), "n": self.count,
                              "n_without_target": self.unscored, "predictions": PREDICTIONS_FILE,
                              "human": HUMAN_FILE if human_file else None, "datasets": datasets})
        metrics_file = atomic_write(self.out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        self.finished = True
        return EvalResult(self.out_dir / PREDICTIONS_FILE, metrics_file, human_file, self.count, metrics)

    def close(self) -> None:
        """After `finish`, or after a failure: then the rows so far are kept as `*.partial`."""
        try:
            if not self.finished:
                self._publish(PARTIAL)
        finally:
            self._stack.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _limited(batches: Iterable[Mapping[str, np.ndarray]], settings: EvalSection, total: int | None, what: str):
    """(index, batch, real rows) up to `max_examples` records, with a progress bar when asked."""
    limit = settings.max_examples or None
    bar = None
    if settings.progress:
        from tqdm import tqdm

        known = [x for x in (total, limit) if x]
        bar = tqdm(total=min(known) if known else None, desc=what, unit="image", dynamic_ncols=True)
    seen = 0
    try:
        for index, batch in enumerate(batches):
            if limit is not None and seen >= limit:
                break
            rows = len(next(iter(batch.values())))
            rows = min(rows, limit - seen) if limit is not None else rows
            yield index, batch, rows
            seen += rows
            if bar is not None:
                bar.update(rows)
    finally:
        if bar is not None:
            bar.close()


def _check_batch_size(settings: EvalSection) -> None:
    if settings.batch_size < 1:
        raise ValueError(f"eval batch_size {settings.batch_size}: resolve it first (jaxbiqa.config.eval_settings "
                         "makes 0 the data section's global_batch_size)")


def skip_counts(skipped: SkipReport | None) -> dict[str, Any]:
    """metrics.json's record of the records the pipeline skipped (nothing without a report)."""
    if skipped is None:
        return {}
    return {"skipped_records": len(skipped), "skipped_examples": [f"{where}: {why}" for where, why in
                                                                  skipped.entries[:SKIPPED_EXAMPLES]]}


def evaluate(model, processor, batches: Iterable[Mapping[str, np.ndarray]], out_dir: PathLike, *,
             rollout: RolloutSection, settings: EvalSection, total: int | None = None,
             extra: Mapping[str, Any] | None = None, should_stop: Callable[[], bool] | None = None,
             skipped: SkipReport | None = None) -> EvalResult:
    """Generate with `model` on `batches` (e.g. `eval_pipeline`) and write predictions, human texts
    and metrics into `out_dir` (see the module doc). `settings` is a config's `eval` section with its
    batch size resolved (`jaxbiqa.config.eval_settings`); `total` (records) sizes the progress bar;
    `extra` is stored in metrics.json (e.g. the checkpoint evaluated), and so are the counts of
    `skipped` (the report `eval_pipeline` fills). `should_stop` is asked after each batch: when it
    says so, the rows so far are kept as `.partial` and InterruptedError is raised."""
    _check_batch_size(settings)
    evaluator = Evaluator(processor, rollout, model.config.text.vocab_size, settings)
    base_key = jax.random.key(settings.seed)
    compiles = Evaluator.compile_count()
    with PredictionWriter(out_dir, settings) as writer:
        for index, batch, rows in _limited(batches, settings, total, "evaluate"):
            full, _ = fill_batch(batch, settings.batch_size)
            out = evaluator(model, evaluator.prepare(model, full), jax.random.fold_in(base_key, index))
            if out.interrupted:
                raise InterruptedError(f"evaluation stopped by a signal after {writer.count} records; they are in "
                                       f"{writer.out_dir / (PREDICTIONS_FILE + PARTIAL)}")
            for record in prediction_rows(full, out, rows, settings.strict_parse):
                writer.add(record)
            if should_stop is not None and should_stop():
                raise InterruptedError(f"evaluation stopped after {writer.count} records; they are in "
                                       f"{writer.out_dir / (PREDICTIONS_FILE + PARTIAL)}")
        info = {"mode": "generate", "compiles": Evaluator.compile_count() - compiles,
                "max_new_tokens": {"pass1": evaluator.pass1.max_new_tokens,
                                   "pass2": evaluator.pass2.max_new_tokens},
                "two_pass": evaluator.two_pass}
        return writer.finish({**info, **dict(extra or {}), **skip_counts(skipped)})


def evaluate_qalign(model, processor, batches: Iterable[Mapping[str, np.ndarray]], out_dir: PathLike, *,
                    settings: EvalSection, prompt=None, total: int | None = None,
                    extra: Mapping[str, Any] | None = None, skipped: SkipReport | None = None) -> EvalResult:
    """Probability scoring (`jaxbiqa.eval.qalign`, no generation) of the decoded images of `batches`
    (`eval_pipeline(..., preprocess=False)`): the `overall_score` column only."""
    from jaxbiqa.eval.qalign import QAlignPrompt, qalign_scores

    _check_batch_size(settings)
    prompt = prompt or QAlignPrompt()
    with PredictionWriter(out_dir, settings) as writer:
        for _, batch, rows in _limited(batches, settings, total, "probability scoring"):
            scores = qalign_scores(model, processor, list(batch["image"][:rows]), batch_size=settings.batch_size,
                                   prompt=prompt)
            for i in range(rows):
                writer.add({**base_record(batch, i), "overall_score": _finite(scores[i])})
        info = {"mode": "qalign", "prompt": dataclasses.asdict(prompt)}
        return writer.finish({**info, **dict(extra or {}), **skip_counts(skipped)})


def eval_pipeline(data, processor=None, split: str = "eval", skipped: SkipReport | None = None):
    """The data section's evaluation batches (`data.eval` / `data.eval_split`, in order, once): with
    the pass-1 prompt and image inputs of `processor`, or the decoded images alone without one. The
    records skipped (`data.on_bad_record="skip"`) are added to `skipped` once the batches end."""
    from jaxbiqa.data.pipeline import Pass1Preprocess, make_pipeline

    def ended(epoch: int, report: SkipReport) -> None:
        skipped.entries.extend(report.entries)

    return make_pipeline(data, split, preprocess=Pass1Preprocess(processor) if processor is not None else None,
                         on_epoch_end=ended if skipped is not None else None)


def count_records(data, split: str = "eval") -> int:
    """How many records the pipeline of `split` ("train" or "eval") reads (for progress bars)."""
    from jaxbiqa.data.pipeline import open_sources

    specs, wanted = (data.train, data.train_split) if split == "train" else (data.eval, data.eval_split)
    return len(open_sources(specs, wanted, data))
