"""`jaxbiqa config`: print the resolved config (recipe + overrides) as JSON."""

from __future__ import annotations

import argparse
import json

from jaxbiqa.config import load_config, to_dict


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and repeatable `--set key=value`, shared by every sub-command that takes a config."""
    parser.add_argument("--config", default=None, help="recipe name in configs/ or a path to a config .py file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set rewards.params.score.threshold=0.3 (repeatable)")


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    print(json.dumps(to_dict(config), indent=2))
    return 0
