"""Regenerate the memory tables of README.md and docs/ from the shipped recipes (`make tables`).

Each table follows a line quoting the `jaxbiqa plan ... --markdown` command that prints it (in
backticks, ending with a colon); the table under it is replaced by that command's output.
tests/scale/test_plan.py checks that the README's table is what the command prints.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

from jaxbiqa.cli import main

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/scaling.md", "docs/reproduce.md")
COMMAND = re.compile(r"^`(jaxbiqa plan [^`]*--markdown)`:\n\n", re.MULTILINE)


def table(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if main(command.split()[1:]) != 0:
            raise SystemExit(f"{command} failed")
    return out.getvalue().strip() + "\n"


def regenerate(text: str) -> str:
    pieces, last = [], 0
    for match in COMMAND.finditer(text):
        start = match.end()
        end = text.find("\n\n", text.find("GiB per device", start))  # the table and its footnote
        pieces += [text[last:start], table(match.group(1)).rstrip("\n")]
        last = end
    return "".join(pieces) + text[last:]


if __name__ == "__main__":
    for name in FILES:
        path = ROOT / name
        if path.is_file():
            new = regenerate(path.read_text())
            if new != path.read_text():
                path.write_text(new)
                print(f"updated {name}", file=sys.stderr)
