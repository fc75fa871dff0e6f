"""Reasoning reward: ROUGE-1 of the completion against the human perception text (rouge-score).

The human text of a sample joins the chosen fields (default description, good_aspect, bad_aspect)
with spaces. The authors' reward code concatenates them with no separator, so a field that does
not end in punctuation merges with the next one's first word ("...overseas" + "The space..." ->
"overseasthe", one token ROUGE matches with nothing; on real completions this lowers ROUGE-1
precision by up to 0.02 for about one pair in eight, method.md 8.6). jaxbiqa keeps the spaces;
`join="authors"` reproduces their concatenation exactly. A field value may be a string, a `{"answer": str}` dict (Q-Reasoning test), a list of
strings (one per annotator), or blank / None (missing). A string holding
`<translation>EN</translation>` (the Q-Reasoning training file) contributes its English part.
Lists make one reference per annotator k (the k-th entry of every list field, plus the plain
string fields); the reward takes the best reference. A sample without any reference text that
ROUGE can tokenise gets the `missing` constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from rouge_score.rouge_scorer import RougeScorer
from rouge_score.tokenizers import DefaultTokenizer

from jaxbiqa.parse import tag_content
from jaxbiqa.rewards.base import Batch, RewardFn, column

HUMAN_FIELDS: tuple[str, ...] = ("description", "good_aspect", "bad_aspect")
MEASURES: tuple[str, ...] = ("precision", "recall", "fmeasure")
Join = Literal["space", "authors"]
SEPARATORS: dict[str, str] = {"space": " ", "authors": ""}


def _field_text(value: Any, *, where: str) -> str | list[str | None] | None:
    """One field value as a string, a per-annotator list, or None when missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, Mapping):
        if "answer" not in value:
            raise ValueError(f"{where}: a dict field value needs an 'answer' key, got keys {sorted(value)}")
        return _field_text(value["answer"], where=where)
    if isinstance(value, str):
        english = tag_content(value, "translation")
        text = (english if english is not None else value).strip()
        return text or None
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [_field_text(v, where=f"{where}[{k}]") for k, v in enumerate(value)]
        if any(isinstance(item, list) for item in items):
            raise ValueError(f"{where}: nested lists are not a human text")
        return items if any(items) else None
    raise TypeError(f"{where}: a human text must be a str, dict, list or None, got {type(value).__name__}")


def human_references(
    sample: Mapping[str, Any], fields: Sequence[str] = HUMAN_FIELDS, *, where: str = "sample", join: Join = "space"
) -> list[str]:
    """The reference texts of one sample (one per annotator; empty when it has no human text), the
    fields joined with a space or, `join="authors"`, with nothing (see the module docstring)."""
    if join not in SEPARATORS:
        raise ValueError(f"human_references: join must be one of {list(SEPARATORS)}, got {join!r}")
    texts = [_field_text(sample.get(f), where=f"{where} field {f!r}") for f in fields]
    n_refs = max((len(t) for t in texts if isinstance(t, list)), default=1)
    refs = []
    for k in range(n_refs):
        parts = [t[k] if isinstance(t, list) and k < len(t) else t for t in texts]
        parts = [p for p in parts if isinstance(p, str)]
        if parts:
            refs.append(SEPARATORS[join].join(parts))
    return refs


def reasoning_reward(
    *,
    measure: Literal["precision", "recall", "fmeasure"] = "precision",
    text: Literal["completion", "caption"] = "completion",
    fields: Sequence[str] = HUMAN_FIELDS,
    floor: float = 0.1,
    missing: float | None = None,
    join: Join = "space",
) -> RewardFn:
    """max(floor, best ROUGE-1 `measure` over the references) for samples with human text, else
    `missing` (default: the floor). Range: [min(floor, missing), max(1, missing)].

    text: "completion" scores the whole completion (the authors); "caption" scores the content of
    its `<caption>` block, and a completion without one gets the floor.
    Precision is the share of the completion's tokens found in the human text (rouge-score's
    `score(target=human, prediction=completion)`). `join`: how the fields make one reference
    ("space", or "authors" for their separator-less concatenation).
    """
    if join not in SEPARATORS:
        raise ValueError(f"reasoning_reward: join must be one of {list(SEPARATORS)}, got {join!r}")
    if measure not in MEASURES:
        raise ValueError(f"reasoning_reward: measure must be one of {MEASURES}, got {measure!r}")
    if text not in ("completion", "caption"):
        raise ValueError(f"reasoning_reward: text must be 'completion' or 'caption', got {text!r}")
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    if not fields:
        raise ValueError("reasoning_reward: fields must name at least one human text field")
    missing_value = floor if missing is None else missing
    scorer = RougeScorer(["rouge1"], use_stemmer=False)
    tokenizer = DefaultTokenizer(use_stemmer=False)

    def reward(completions: Sequence[str], batch: Batch) -> np.ndarray:
        n = len(completions)
        cols = {f: column(batch, f, n, reward="reasoning") for f in fields}
        out = np.empty(n, np.float32)
        for i, completion in enumerate(completions):
            sample = {f: cols[f][i] for f in fields}
            refs = [r for r in human_references(sample, fields, where=f"batch[{i}]", join=join) if tokenizer.tokenize(r)]
            if not refs:
                out[i] = missing_value
                continue
            prediction = tag_content(completion, "caption") if text == "caption" else completion
            if not isinstance(prediction, str):
                out[i] = floor
                continue
            best = max(getattr(scorer.score(r, prediction)["rouge1"], measure) for r in refs)
            out[i] = max(floor, best)
        return out

    return reward
