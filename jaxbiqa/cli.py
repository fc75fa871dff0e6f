"""The `jaxbiqa` command line.

Each sub-command lives in its own module exposing `configure(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `jaxbiqa --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
    parser = argparse.ArgumentParser(prog="jaxbiqa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    return int(module.run(sub.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
