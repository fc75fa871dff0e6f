"""Reference completions for the supervised warm start, written from a record's fields.

Template (the method's completion layout, method.md section 3):

    <caption>
    {description} {good_aspect} {bad_aspect}
    </caption>
    <think>
    {think}
    </think>
    <answer>
    {"rating": {mos_norm:.2f}}
    </answer>

* the caption joins the non-blank human perception fields (the text the reasoning reward compares
  against); a record without any gets "The image shows its content with no notable detail." so
  the layout stays intact;
* the think sentence links the perception to the rating with the record's Q-Insight labels when
  it has them: "The main flaw is {severity} {distortion}, so the overall quality is {level}."
  ("No distortion is visible, so ..." for severity "none"; without labels: "Weighing the
  strengths against the flaws, the overall quality is {level}."), where {level} is the Q-Align
  word of the rounded rating (1 bad, 2 poor, 3 fair, 4 good, 5 excellent);
* the answer is the target on 1-5 (`mos_norm`) with two decimals, as the prompt asks.
A record whose `reference` field is set (conversation data, the Q-Instruct-style baseline) uses
that text verbatim instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

LEVEL_WORDS = ("bad", "poor", "fair", "good", "excellent")  # ratings 1..5
NO_PERCEPTION = "The image shows its content with no notable detail."


def _text(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    return value.strip() if isinstance(value, str) else ""


def level_word(rating: float) -> str:
    """The Q-Align level word of a 1-5 rating (rounded, clipped to 1..5)."""
    return LEVEL_WORDS[int(min(5, max(1, round(rating)))) - 1]


def think_sentence(record: Mapping[str, Any], rating: float) -> str:
    severity, distortion = _text(record, "severity"), _text(record, "distortion")
    level = level_word(rating)
    if severity == "none" or distortion == "none":
        return f"No distortion is visible, so the overall quality is {level}."
    if severity and distortion:
        return f"The main flaw is {severity} {distortion}, so the overall quality is {level}."
    return f"Weighing the strengths against the flaws, the overall quality is {level}."


def reference_completion(record: Mapping[str, Any]) -> str:
    """The SFT target of one record (see the module docstring); needs a finite `mos_norm` unless
    the record carries a `reference` answer."""
    reference = _text(record, "reference")
    if reference:
        return reference
    rating = float(record.get("mos_norm", math.nan))
    if not math.isfinite(rating):
        raise ValueError(f"record {record.get('id', '?')!r}: no reference completion without a target "
                         "(mos_norm is missing)")
    caption = " ".join(t for t in (_text(record, k) for k in ("description", "good_aspect", "bad_aspect")) if t)
    return (f"<caption>\n{caption or NO_PERCEPTION}\n</caption>\n<think>\n{think_sentence(record, rating)}\n</think>\n"
            f'<answer>\n{{"rating": {rating:.2f}}}\n</answer>')
