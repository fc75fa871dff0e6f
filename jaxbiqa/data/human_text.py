"""The human perception text of a record (Q-Reasoning's `description`, `good_aspect`, `bad_aspect`),
read one way for the reasoning reward and for the evaluation's ROUGE.

A field value may be a string, a `{"answer": str}` dict (Q-Reasoning test), a list of strings (one
per annotator), or blank / None / NaN (missing). A string holding `<translation>EN</translation>`
(the Q-Reasoning training file) contributes its English part. Lists make one reference per
annotator k (the k-th entry of every list field, plus the plain string fields).

The fields are joined with spaces. The authors' reward code concatenates them with no separator,
so a field that does not end in punctuation merges with the next one's first word ("...overseas" +
"The space..." -> "overseasthe", one token ROUGE matches with nothing; method.md 8.6);
`join="authors"` reproduces that exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from jaxbiqa.config import UserError
from jaxbiqa.parse import tag_content

HUMAN_FIELDS: tuple[str, ...] = ("description", "good_aspect", "bad_aspect")
Join = Literal["space", "authors"]
SEPARATORS: dict[str, str] = {"space": " ", "authors": ""}


def _field_text(value: Any, *, where: str) -> str | list[str | None] | None:
    """One field value as a string, a per-annotator list, or None when missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, Mapping):
        if "answer" not in value:
            raise UserError(f"{where}: a dict field value needs an 'answer' key, got keys {sorted(value)}")
        return _field_text(value["answer"], where=where)
    if isinstance(value, str):
        english = tag_content(value, "translation")
        text = (english if english is not None else value).strip()
        return text or None
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [_field_text(v, where=f"{where}[{k}]") for k, v in enumerate(value)]
        if any(isinstance(item, list) for item in items):
            raise UserError(f"{where}: nested lists are not a human text")
        return items if any(items) else None
    raise UserError(f"{where}: a human text must be a str, {{'answer': str}}, a list or None, "
                     f"got {type(value).__name__}")


def human_references(record: Mapping[str, Any], fields: Sequence[str] = HUMAN_FIELDS, *, where: str = "record",
                     join: Join = "space") -> list[str]:
    """The reference texts of one record, one per annotator (empty when it has no human text)."""
    if join not in SEPARATORS:
        raise ValueError(f"human_references: join must be one of {list(SEPARATORS)}, got {join!r}")
    texts = [_field_text(record.get(f), where=f"{where} field {f!r}") for f in fields]
    n_refs = max((len(t) for t in texts if isinstance(t, list)), default=1)
    refs = []
    for k in range(n_refs):
        parts = [t[k] if isinstance(t, list) and k < len(t) else t for t in texts]
        parts = [p for p in parts if isinstance(p, str)]
        if parts:
            refs.append(SEPARATORS[join].join(parts))
    return refs


def human_text(record: Mapping[str, Any], fields: Sequence[str] = HUMAN_FIELDS, *, where: str = "record") -> str:
    """Every annotator's text of a record in one string: each field's text (a list's entries in
    order) joined by spaces; "" without any."""
    parts: list[str] = []
    for field in fields:
        text = _field_text(record.get(field), where=f"{where} field {field!r}")
        parts += [t for t in text if t] if isinstance(text, list) else [text] if text else []
    return " ".join(parts)
