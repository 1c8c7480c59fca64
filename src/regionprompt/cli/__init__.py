"""The ``regionprompt`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds an argparse
parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code).
Modules are listed explicitly in :data:`COMMAND_MODULES` so that jump-to-definition works.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from regionprompt import __version__
from regionprompt.errors import RegionPromptError
from regionprompt.logging_utils import configure_logging, get_logger

# Order = order in `regionprompt --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "detect",
    "label",
    "dataset",
    "world",
    "evaluate",
    "eval_teacher",
    "concepts",
    "concept",
    "serve",
    "pseudo_label",
    "eval_proposals",
    "eval_detector",
    "import_regionclip",
    "train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regionprompt",
        description="Open-vocabulary object detection from text and visual prompts.",
    )
    parser.add_argument("--version", action="version", version=f"regionprompt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"regionprompt.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regionprompt`` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except RegionPromptError as exc:
        get_logger().debug("error details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`regionprompt world info | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
