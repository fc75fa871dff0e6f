"""Format rewards: the method's caption/think/answer layout and Q-Insight's think/answer layout.

The authors' format reward first splits the completion on the word "assistant" (method.md 8.1), so
it is 0 on almost every completion and the method trains, in effect, without one. jaxbiqa does not
reproduce that: the reward here looks at the completion itself and is switched on by config.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxbiqa.parse import DEFAULT_RANGE, Range, rating_in_answer
from jaxbiqa.rewards.base import Batch, RewardFn

METHOD_TAGS = ("caption", "think", "answer")
QINSIGHT_TAGS = ("think", "answer")


def _layout(tags: Sequence[str], *, strict: bool) -> re.Pattern[str]:
    parts = [rf"<{re.escape(t)}>(.*?)</{re.escape(t)}>" for t in tags]
    if strict:
        return re.compile(r"\s*" + r"\s*".join(parts) + r"\s*", re.DOTALL)
    return re.compile(r".*?".join(parts), re.DOTALL)


def format_reward(
    *,
    value: float = 0.5,
    strict: bool = True,
    tags: Sequence[str] = METHOD_TAGS,
    valid_range: Range = DEFAULT_RANGE,
) -> RewardFn:
    """`value` when a completion follows the tag layout, else 0. Range: {0, value}.

    strict: the whole completion (surrounding whitespace aside) is `<t1>…</t1> <t2>…</t2> …`
      with only whitespace between blocks, each tag exactly once, every block non-blank, and the
      last block holding a rating that the authors' strict parser reads, within `valid_range`.
    lenient: the blocks appear in this order somewhere in the completion; nothing else is checked.
    """
    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    if len(tags) < 2 or not all(isinstance(t, str) and re.fullmatch(r"\w+", t) for t in tags):
        raise ValueError(f"format_reward: tags must name at least two word-like tags, got {tags!r}")
    if len(set(tags)) != len(tags):
        raise ValueError(f"format_reward: tags must be distinct, got {tags!r}")
    pattern = _layout(tags, strict=strict)
    out_value = np.float32(value)

    def matches(text: object) -> bool:
        if not isinstance(text, str):
            return False
        if not strict:
            return pattern.search(text) is not None
        if any(text.count(f"<{t}>") != 1 or text.count(f"</{t}>") != 1 for t in tags):
            return False  # checked first: with unique tags the full match cannot backtrack far
        m = pattern.fullmatch(text)
        if m is None or any(not block.strip() for block in m.groups()):
            return False
        return not np.isnan(rating_in_answer(m.groups()[-1], strict=True, valid_range=valid_range))

    def reward(completions: Sequence[str], batch: Batch) -> np.ndarray:
        del batch  # the layout depends on the completion alone
        return np.array([out_value if matches(c) else 0.0 for c in completions], np.float32)

    return reward


def qinsight_format_reward(
    *, value: float = 1.0, strict: bool = True, tags: Sequence[str] = QINSIGHT_TAGS, valid_range: Range = DEFAULT_RANGE
) -> RewardFn:
    """Q-Insight's format reward: `format_reward` on the `<think>…</think><answer>…</answer>` layout,
    worth 1.0. Range: {0, value}."""
    return format_reward(value=value, strict=strict, tags=tags, valid_range=valid_range)
