"""Reasoning reward: ROUGE-1 of the completion against the human perception text (rouge-score).

The human text of a sample is read by `jaxbiqa.data.human_text.human_references`: the chosen
fields (default description, good_aspect, bad_aspect) joined with spaces, or with nothing as the
authors' code does (`join="authors"`; on real completions their merged words lower ROUGE-1
precision by up to 0.02 for about one pair in eight, method.md 8.6), one reference per annotator;
the reward takes the best reference. A sample without any reference text that ROUGE can tokenise
gets the `missing` constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from rouge_score.rouge_scorer import RougeScorer
from rouge_score.tokenizers import DefaultTokenizer

from jaxbiqa.data.human_text import HUMAN_FIELDS, SEPARATORS, Join, human_references
from jaxbiqa.parse import tag_content
from jaxbiqa.rewards.base import Batch, RewardFn, column

MEASURES: tuple[str, ...] = ("precision", "recall", "fmeasure")


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
