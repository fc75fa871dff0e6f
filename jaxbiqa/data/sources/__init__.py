"""One reader per dataset format; each returns a list of records (jaxbiqa.data.records).

`read_source(kind, path, **options)` dispatches on `kind` (a key of READERS). For the IQA
datasets `path` is the dataset's root folder in its original layout; for the JSON forms it is the
file. Every reader takes `on_bad="raise"|"skip"` and a `report` (SkipReport) that collects what
was skipped, and `split` / `split_file` where splits apply.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from jaxbiqa.config import UserError
from jaxbiqa.data.sources.agiqa import read_agiqa3k
from jaxbiqa.data.sources.conversations import read_conversations
from jaxbiqa.data.sources.csiq import read_csiq
from jaxbiqa.data.sources.jsonl import read_jsonl
from jaxbiqa.data.sources.kadid import read_kadid
from jaxbiqa.data.sources.koniq import read_koniq
from jaxbiqa.data.sources.live_challenge import read_live_challenge
from jaxbiqa.data.sources.meta_json import read_meta_json
from jaxbiqa.data.sources.pipal import read_pipal
from jaxbiqa.data.sources.qreasoning import attach_targets, read_qreasoning
from jaxbiqa.data.sources.spaq import read_spaq

READERS: dict[str, Callable[..., list[dict]]] = {
    "koniq": read_koniq,
    "spaq": read_spaq,
    "kadid": read_kadid,
    "live_challenge": read_live_challenge,
    "agiqa3k": read_agiqa3k,
    "csiq": read_csiq,
    "pipal": read_pipal,
    "qreasoning": read_qreasoning,
    "meta_json": read_meta_json,
    "conversations": read_conversations,
    "jsonl": read_jsonl,
}


def read_source(kind: str, path: str | os.PathLike, **options: Any) -> list[dict]:
    if kind not in READERS:
        raise UserError(f"unknown source kind {kind!r}; known: {', '.join(READERS)}")
    return READERS[kind](path, **options)


__all__ = ["READERS", "attach_targets", "read_source", *(f.__name__ for f in READERS.values())]
