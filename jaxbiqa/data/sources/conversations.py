"""LLaVA / Q-Instruct conversation JSON: `[{"id", "image", "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}]` (a JSON list or JSON lines).

Each human turn followed by a gpt turn becomes one record with `question` (the `<image>` /
`<|image|>` marker removed) and `reference` (the answer); the id is the row id, with `#k` added
for the k-th pair (k >= 1) of a multi-turn row. These records carry no MOS.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxbiqa.data.records import BadRecordError, OnBad, RecordGuard, SkipReport, image_path
from jaxbiqa.data.sources.common import Row, existing_file, finish, load_json_rows

IMAGE_MARKER = re.compile(r"<\|?image\|?>")


def turn_pairs(conversations: Any, where: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a conversation list."""
    if not isinstance(conversations, Sequence) or isinstance(conversations, str):
        raise BadRecordError(where, "`conversations` must be a list of turns")
    pairs = []
    question: str | None = None
    for k, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise BadRecordError(where, f"turn {k} needs 'from' and 'value'")
        if turn["from"] == "human":
            question = IMAGE_MARKER.sub("", str(turn["value"])).strip()
        elif turn["from"] == "gpt" and question is not None:
            pairs.append((question, str(turn["value"]).strip()))
            question = None
    return pairs


def image_name(item: Mapping[str, Any], where: str) -> str:
    """The single image of a row (`image`, or a one-element `images` list)."""
    image = item.get("image")
    if image is None and isinstance(item.get("images"), list) and len(item["images"]) == 1:
        image = item["images"][0]
    if not isinstance(image, str) or not image.strip():
        raise BadRecordError(where, "missing image (`image` or a one-element `images` list)")
    return image.strip()


def read_conversations(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                       dataset: str = "conversations", split: str = "train", on_bad: OnBad = "raise",
                       report: SkipReport | None = None) -> list[dict]:
    path = existing_file(path, "conversation file")
    root = Path(image_root) if image_root is not None else path.parent
    guard = RecordGuard(on_bad, report)
    rows = []
    for where, item in load_json_rows(path):
        with guard(where):
            if isinstance(item, BadRecordError):
                raise item
            image = image_name(item, where)
            base_id = str(item.get("id") or os.path.basename(image))
            pairs = turn_pairs(item.get("conversations"), where)
            if not pairs:
                raise BadRecordError(where, "no human turn followed by a gpt turn")
            for k, (question, answer) in enumerate(pairs):
                rows.append(Row(where, {"id": base_id if k == 0 else f"{base_id}#{k}",
                                        "image": image_path(root, image, where),
                                        "question": question, "reference": answer}))
    return finish(rows, dataset=dataset, source=path.name, guard=guard, scale=None, split=split)
