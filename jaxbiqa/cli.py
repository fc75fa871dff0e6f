"""The `jaxbiqa` command line.

Each sub-command lives in its own module exposing `configure(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `jaxbiqa --help` stays instant.

One error boundary for every command: a user error (`jaxbiqa.config.UserError`: bad input, a bad
config, a missing or corrupt file; or an `OSError`: a missing file, an unwritable path, a full disk)
prints one line naming what and where and exits with status 2; `--debug` anywhere on the command
line (or JAXBIQA_DEBUG=1) shows its traceback instead. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from jaxbiqa.config import UserError

USAGE_ERROR = 2  # bad input, as argparse's own usage errors
DEBUG_FLAG, DEBUG_ENV = "--debug", "JAXBIQA_DEBUG"

# name -> (module, one-line help). Modules that a later issue provides are listed with the issue.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval-predictions": ("jaxbiqa.eval.predictions_cmd", "metrics tables for prediction files (released or jaxbiqa's)"),
    "config": ("jaxbiqa.config_cmd", "print a resolved config (with --set overrides) as JSON"),
    "convert": ("jaxbiqa.models.qwen2_5_vl.convert_cmd", "Hugging Face checkpoint <-> jaxbiqa; abstract size report"),
    "train": ("jaxbiqa.rl.train_cmd", "SFT warm start and two-stage GRPO training"),
    "eval": ("jaxbiqa.eval.eval_cmd", "jitted evaluation of a checkpoint on a dataset"),
    "score": ("jaxbiqa.eval.score_cmd", "caption, reasoning and rating for image files"),
    "data": ("jaxbiqa.data.data_cmd", "synthesise, build and inspect datasets"),
    "demo": ("jaxbiqa.demo", "the offline end-to-end demo"),
    "plan": ("jaxbiqa.plan_cmd", "per-device memory plan for a model config and mesh"),
}


def _load(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxbiqa", description=__doc__.splitlines()[0],
                                     epilog=f"{DEBUG_FLAG} (anywhere) or {DEBUG_ENV}=1: show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def user_error_message(err: BaseException) -> str | None:
    """The one line a user error is reported with; None for anything else (a bug: keep its traceback)."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, OSError):
        what = err.strerror or str(err)
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and "disk full" not in what:
            what += " (disk full)"
        where = err.filename if err.filename is None or err.filename2 is None else f"{err.filename} -> {err.filename2}"
        return f"{what}: {where}" if where is not None else what
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / the unknown-command error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = _load(name)
    if module is None:
        print(f"jaxbiqa {name}: not available in this version yet", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f"jaxbiqa {name}", description=COMMANDS[name][1])
    module.configure(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (UserError, OSError) as err:
        message = user_error_message(err)
        if debug or message is None:
            raise
        print(f"jaxbiqa {name}: error: {message}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
