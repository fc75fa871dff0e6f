"""How human-like the model's perception is: ROUGE-1 of its captions against Q-Reasoning texts.

The caption of a pass-1 completion (`jaxbiqa.parse.caption_text`) is the text inside
``<caption>…</caption>``; without those tags, the text before ``<think>``. A completion with
neither has no caption: it is scored 0 (an empty candidate) and counted in `n_no_caption`, so a model is not rewarded for dropping the layout.

The reference of an image is its human description, good aspect and bad aspect joined by single
spaces, read as the reasoning reward reads them (`jaxbiqa.data.human_text.human_text`: a field
may be ``{"answer": str}``, a plain string, or a list of strings, every annotator's text kept).
Human files are JSON lists of records with an ``image`` key, as ``q-reasoning/human_test.json``. Images are matched by
exact name, else by file name (``dir/x.jpg`` matches ``x.jpg``).

ROUGE-1 is rouge-score's, with its default tokenizer and no stemmer; precision is the share of
caption words found in the human text, recall the share of human words found in the caption.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from rouge_score import rouge_scorer

from jaxbiqa.config import UserError
from jaxbiqa.data.human_text import HUMAN_FIELDS, human_text
from jaxbiqa.parse import caption_text



@dataclass(frozen=True)
class AlignmentResult:
    n: int  # images with both a model completion and a human text
    precision: float
    recall: float
    f: float
    n_no_caption: int  # of those, completions without a caption (scored 0)

    def as_dict(self) -> dict:
        return asdict(self)


def load_human_texts(path: str | Path, fields: Sequence[str] = HUMAN_FIELDS) -> dict[str, str]:
    """image -> reference text, for the records of a Q-Reasoning-style file that have any text."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON file: {err}") from None
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of records")
    texts: dict[str, str] = {}
    seen: set[str] = set()
    for i, record in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(record, Mapping) or not isinstance(record.get("image"), str):
            raise UserError(f"{where}: expected an object with a string 'image'")
        if record["image"] in seen:
            raise UserError(f"{where}: duplicate image {record['image']}")
        seen.add(record["image"])
        text = human_text(record, fields, where=where)
        if text:
            texts[record["image"]] = text
    return texts


def _match(images: Sequence[str], human: Mapping[str, str]) -> dict[str, str]:
    """prediction image -> human key, exact name first, then file name."""
    by_name: dict[str, str | None] = {}
    for key in human:
        name = PurePosixPath(key).name
        by_name[name] = None if name in by_name else key  # None: ambiguous file name
    matched = {}
    for image in images:
        key = image if image in human else by_name.get(PurePosixPath(image).name)
        if key is not None:
            matched[image] = key
    return matched


def rouge1_alignment(completions: Mapping[str, str], human: Mapping[str, str]) -> AlignmentResult:
    """Mean ROUGE-1 P/R/F of the captions of `completions` (image -> pass-1 text) against `human`."""
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    matched = _match(list(completions), human)
    scores, missing = [], 0
    for image, key in matched.items():
        caption = caption_text(completions[image])
        if caption is None:
            missing += 1
            caption = ""
        s = scorer.score(human[key], caption)["rouge1"]
        scores.append((s.precision, s.recall, s.fmeasure))
    if not scores:
        return AlignmentResult(0, float("nan"), float("nan"), float("nan"), 0)
    p, r, f = np.mean(np.array(scores), axis=0)
    return AlignmentResult(len(scores), float(p), float(r), float(f), missing)
