"""Reading ratings and tagged sections out of completions; nothing here raises on any input.

Two rating parsers share one entry point, `parse_rating`:

* strict (the authors' code): the first `<answer>(.*?)</answer>` block (DOTALL), then the first
  `"rating"\\s*:\\s*([\\d.]+)` inside it, then `float`;
* tolerant (default), in this order:
  1. the last closed `<answer>…</answer>` block that holds a number (tags case-insensitive);
  2. otherwise the text after a final unclosed `<answer>`;
  3. otherwise, only when there is no `<answer>` tag at all, the last `rating: x` anywhere.
  Inside an answer, a rating key (`"rating": 3.2`, `'rating': "3.2"`, `rating = 3.2`, any case)
  wins; without a key the first number counts (`<answer>3.42</answer>`). A key whose value is not a
  number (`"rating": NaN`) gives NaN. `x/5` reads as x; a fraction over any other denominator is NaN.

Both then apply the range check: values outside `valid_range` (inclusive, default [1, 5]) and
non-finite values become NaN; `valid_range=None` keeps every finite value. No rating -> NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

Range = tuple[float, float] | None
DEFAULT_RANGE: tuple[float, float] = (1.0, 5.0)

_STRICT_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_STRICT_RATING = re.compile(r"\"rating\"\s*:\s*([\d.]+)")

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_RATING_KEY = re.compile(r"[\"']?\brating\b[\"']?\s*[:=]", re.IGNORECASE)
_KEYED_VALUE = re.compile(rf"\s*[\"']?\s*({_NUM})(?:\s*/\s*({_NUM}))?")
_BARE_VALUE = re.compile(rf"(?<![\w.])({_NUM})(?:\s*/\s*({_NUM}))?")


def _to_float(number: str, denominator: str | None = None) -> float:
    try:
        value = float(number)
        if denominator is not None and float(denominator) != 5.0:
            return math.nan
    except ValueError:
        return math.nan
    return value


def _in_range(value: float, valid_range: Range) -> float:
    if not math.isfinite(value):
        return math.nan
    if valid_range is not None and not valid_range[0] <= value <= valid_range[1]:
        return math.nan
    return value


def _rating_in_segment(segment: str) -> float | None:
    """The rating one answer segment states; None when it states no number at all."""
    keys = list(_RATING_KEY.finditer(segment))
    if keys:
        m = _KEYED_VALUE.match(segment, keys[-1].end())
        return _to_float(m.group(1), m.group(2)) if m else math.nan
    m = _BARE_VALUE.search(segment)
    return _to_float(m.group(1), m.group(2)) if m else None


def _strict_rating(text: str) -> float:
    answer = _STRICT_ANSWER.search(text)
    if answer is None:
        return math.nan
    m = _STRICT_RATING.search(answer.group(1))
    return _to_float(m.group(1)) if m else math.nan


def _tolerant_rating(text: str) -> float:
    for block in reversed(_ANSWER_BLOCK.findall(text)):
        value = _rating_in_segment(block)
        if value is not None:
            return value
    opens = list(_ANSWER_OPEN.finditer(text))
    if opens:
        tail = text[opens[-1].end() :]
        if _ANSWER_CLOSE.search(tail) is None:
            value = _rating_in_segment(tail)
            if value is not None:
                return value
        return math.nan
    keys = list(_RATING_KEY.finditer(text))
    if keys:
        m = _KEYED_VALUE.match(text, keys[-1].end())
        if m:
            return _to_float(m.group(1), m.group(2))
    return math.nan


def parse_rating(text: Any, *, strict: bool = False, valid_range: Range = DEFAULT_RANGE) -> float:
    """The rating in a completion, or NaN (no rating, out of range, not a string)."""
    if not isinstance(text, str):
        return math.nan
    value = _strict_rating(text) if strict else _tolerant_rating(text)
    return _in_range(value, valid_range)


def rating_in_answer(content: Any, *, strict: bool = False, valid_range: Range = DEFAULT_RANGE) -> float:
    """The rating stated inside the content of one answer block (tags already removed), or NaN."""
    if not isinstance(content, str):
        return math.nan
    if strict:
        m = _STRICT_RATING.search(content)
        value = _to_float(m.group(1)) if m else math.nan
    else:
        found = _rating_in_segment(content)
        value = math.nan if found is None else found
    return _in_range(value, valid_range)


def parse_ratings(texts: Iterable[Any], *, strict: bool = False, valid_range: Range = DEFAULT_RANGE) -> np.ndarray:
    """`parse_rating` over many completions, as float64 (NaN where unparsable)."""
    return np.array([parse_rating(t, strict=strict, valid_range=valid_range) for t in texts], np.float64)


def tag_content(text: Any, tag: str, *, last: bool = False) -> str | None:
    """The stripped content of the first (or last) closed `<tag>…</tag>`; None when there is none."""
    if not isinstance(text, str):
        return None
    blocks = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL)
    if not blocks:
        return None
    return (blocks[-1] if last else blocks[0]).strip()


def split_caption(text: Any, *, until: Literal["think", "answer"] = "think") -> str | None:
    """The pass-2 input: the raw text before the first `<think>` (caption only, the method) or
    before the first `<answer>` (caption + think, an earlier variant).

    None when the tag is missing or nothing but whitespace precedes it (pass 2 is then skipped).
    """
    if until not in ("think", "answer"):
        raise ValueError(f"split_caption: until must be 'think' or 'answer', got {until!r}")
    if not isinstance(text, str):
        return None
    head, found, _ = text.partition(f"<{until}>")
    if not found or not head.strip():
        return None
    return head


def caption_text(text: Any) -> str | None:
    """The caption of a pass-1 completion, stripped: the `<caption>` block's content, else the text
    before `<think>` (`split_caption`); None without either."""
    caption = tag_content(text, "caption")
    if caption is None:
        head = split_caption(text, until="think")
        caption = head.strip() if head is not None else None
    return caption
