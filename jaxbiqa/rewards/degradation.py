"""Q-Insight degradation reward: `class_value` (0.25) for the right distortion class, and
`severity_value` (0.75) more when the severity is right too.

Classes: noise, compression, blur, darken; severities: slight, moderate, obvious, serious,
catastrophic; "none" stands for no distortion (None, "", "null", "none" all read as "none").
Comparison is case-insensitive. Ground truth comes from `batch["distortion"]` and
`batch["severity"]` and must use these names.

Accepted answers:
* strict: Q-Insight's regex on the first `<answer>` block,
  `"distortion_class"\\s*:\\s*"(...)".*?"severity"\\s*:\\s*"(...)"`;
* tolerant (default), in the last `<answer>` block (else an unclosed final `<answer>`, else the
  whole completion when it has no `<answer>` tag):
  1. keys, quoted or not, `:` or `=`: distortion_class / distortion_type / distortion /
     degradation, and severity / severity_level / level (`{"distortion_class": "blur", ...}`),
     when the value is a known name or synonym (null / none / no read as "none");
  2. otherwise the first word naming one, synonyms included (noisy, compressed, jpeg, blurry,
     blurred, dark, underexposed, slightly, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxbiqa.rewards.base import Batch, RewardFn, column

NONE = "none"
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "noise": ("noise", "noisy", "grain", "grainy"),
    "compression": ("compression", "compressed", "jpeg", "blocky", "blocking"),
    "blur": ("blur", "blurry", "blurred", "blurring", "blurriness", "out-of-focus"),
    "darken": ("darken", "darkened", "dark", "darkness", "underexposed", "underexposure"),
}
SEVERITY_WORDS: dict[str, tuple[str, ...]] = {
    "slight": ("slight", "slightly"),
    "moderate": ("moderate", "moderately"),
    "obvious": ("obvious", "obviously"),
    "serious": ("serious", "seriously"),
    "catastrophic": ("catastrophic", "catastrophically"),
}
_NONE_WORDS = ("none", "null", "no")

_STRICT_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_STRICT_PAIR = re.compile(r"\"distortion_class\"\s*:\s*\"([^\"]+)\".*?\"severity\"\s*:\s*\"([^\"]+)\"", re.DOTALL)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_VALUE = r"\s*[:=]\s*[\"']?\s*([A-Za-z-]+)"
_CLASS_KEY = re.compile(r"[\"']?\b(?:distortion_class|distortion_type|distortion|degradation)\b[\"']?" + _VALUE, re.I)
_SEVERITY_KEY = re.compile(r"[\"']?\b(?:severity_level|severity|level)\b[\"']?" + _VALUE, re.I)


def _lookup(words: dict[str, tuple[str, ...]]) -> dict[str, str]:
    table = {w: name for name, forms in words.items() for w in (name, *forms)}
    table.update({w: NONE for w in _NONE_WORDS})
    return table


_CLASS_OF = _lookup(CLASS_WORDS)
_SEVERITY_OF = _lookup(SEVERITY_WORDS)


def _canonical(value: object, table: dict[str, str]) -> str | None:
    if value is None:
        return NONE
    word = str(value).strip().lower()
    return NONE if not word else table.get(word)


def _word_pattern(words: dict[str, tuple[str, ...]]) -> re.Pattern[str]:
    forms = sorted({w for name, f in words.items() for w in (name, *f)}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in forms) + r")\b", re.IGNORECASE)


_CLASS_WORD = _word_pattern(CLASS_WORDS)
_SEVERITY_WORD = _word_pattern(SEVERITY_WORDS)


def _answer_segment(text: str) -> str:
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        return blocks[-1]
    opens = list(_ANSWER_OPEN.finditer(text))
    return text[opens[-1].end() :] if opens else text


def parse_degradation(text: object, *, strict: bool = False) -> tuple[str | None, str | None]:
    """(class, severity) stated by a completion, canonical names or "none"; None where not found."""
    if not isinstance(text, str):
        return None, None
    if strict:
        answer = _STRICT_ANSWER.search(text)
        pair = _STRICT_PAIR.search(answer.group(1)) if answer else None
        if pair is None:
            return None, None
        return _canonical(pair.group(1), _CLASS_OF), _canonical(pair.group(2), _SEVERITY_OF)
    segment = _answer_segment(text)
    found = []
    for key, word, table in ((_CLASS_KEY, _CLASS_WORD, _CLASS_OF), (_SEVERITY_KEY, _SEVERITY_WORD, _SEVERITY_OF)):
        keyed = key.search(segment)
        name = _canonical(keyed.group(1), table) if keyed else None
        if name is None:
            m = word.search(segment)
            name = table[m.group(1).lower()] if m else None
        found.append(name)
    return found[0], found[1]


def degradation_reward(
    *,
    class_value: float = 0.25,
    severity_value: float = 0.75,
    class_key: str = "distortion",
    severity_key: str = "severity",
    strict: bool = False,
) -> RewardFn:
    """Q-Insight's degradation reward (see the module doc). Range: {0, class_value,
    class_value + severity_value}."""

    def truth(values: Sequence[object], table: dict[str, str], key: str) -> list[str]:
        out = []
        for i, v in enumerate(values):
            name = _canonical(v, table)
            if name is None:
                valid = sorted({*table.values()})
                raise ValueError(f"degradation reward: batch field {key!r}[{i}] = {v!r} is not one of {valid}")
            out.append(name)
        return out

    def reward(completions: Sequence[str], batch: Batch) -> np.ndarray:
        n = len(completions)
        gt_class = truth(column(batch, class_key, n, reward="degradation"), _CLASS_OF, class_key)
        gt_severity = truth(column(batch, severity_key, n, reward="degradation"), _SEVERITY_OF, severity_key)
        out = np.zeros(n, np.float32)
        for i, text in enumerate(completions):
            cls, sev = parse_degradation(text, strict=strict)
            if cls is not None and cls == gt_class[i]:
                out[i] = class_value + (severity_value if sev is not None and sev == gt_severity[i] else 0.0)
        return out

    return reward
