"""The ``regionprompt`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds an argparse
parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code).
Modules are listed explicitly in :data:`COMMAND_MODULES` so that jump-to-definition works.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Sequence

from regionprompt import __version__
from regionprompt.errors import RegionPromptError
from regionprompt.logging_utils import configure_logging, get_logger

# Every command: its name, the module that registers it, and its one-line help (order = order in
# `regionprompt --help`). The table lets the CLI import only the module of the command being run: the
# others pull in torch, open_clip and torchvision, seconds of start-up that `--help` must not pay.
# tests/test_cli.py checks it against what the modules register.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the demo (what `make demo` runs): real detections of the default model"),
    "detect": ("detect", "detect objects from text / box / point prompts; write annotated images and JSON"),
    "label": ("label", "auto-label a folder of images into a COCO or YOLO dataset (resumes after interruption)"),
    "convert": ("dataset", "convert a detection dataset between COCO and YOLO"),
    "dataset": ("dataset", "inspect datasets"),
    "data": ("data", "prepare training data (WebDataset shards)"),
    "world": ("world", "EmojiWorld: the synthetic open-vocabulary benchmark world"),
    "eval": ("evaluate", "evaluate detections (COCO AP, base/novel AP, AP_r/AP_c/AP_f)"),
    "eval-teacher": ("eval_teacher", "zero-shot retrieval, multi-label and GT-box region classification of a CLIP model"),
    "concepts": ("concepts", "concept pools mined from captions (RegionCLIP step 1)"),
    "concept": ("concept", "saved prompt concepts: add, list, show, remove, export, import"),
    "serve": ("serve", "run the REST API and web UI"),
    "pseudo-label": ("pseudo_label", "label proposals of pretrain scenes with the teacher's best concept (RegionCLIP)"),
    "eval-proposals": ("eval_proposals", "average recall (AR@100/300, recall@0.5) of a proposal network, base vs novel objects"),
    "eval-detector": ("eval_detector", "evaluate a detector: text / visual-generic / visual-interactive / mixed prompts, "
                      "negatives on look-alikes"),
    "import-regionclip": ("import_regionclip", "make a detector folder from RegionCLIP's released .pth files (CLIP "
                          "backbone, concept embeddings, RPN)"),
    "export": ("export", "export a T-Rex2 detector to ONNX with prompt embeddings as a graph input (onnxruntime)"),
    "train": ("train", "train models (CLIP teacher, ...)"),
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``commands``: the commands whose modules register their full parsers
    (``None``: all). The others get a placeholder with their help line, so ``--help`` lists them and
    an unknown command is still refused by name."""
    parser = argparse.ArgumentParser(
        prog="regionprompt",
        description="Open-vocabulary object detection from text and visual prompts.",
    )
    parser.add_argument("--version", action="version", version=f"regionprompt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    full = set(COMMAND_MODULES) if commands is None else {COMMANDS[c][0] for c in commands if c in COMMANDS}
    registered: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if module not in full:
            subparsers.add_parser(name, help=help_text)
        elif module not in registered:  # a module may register several commands (dataset: convert, dataset)
            importlib.import_module(f"regionprompt.cli.{module}").register(subparsers)
            registered.add(module)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), or ``None``."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _deepest_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)parser of the command ``argv`` names: ``train clip ...`` -> the ``train clip`` parser."""
    for word in argv:
        if word.startswith("-"):
            continue
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, argv: Sequence[str], unknown: Sequence[str]) -> None:
    """Say which arguments the command does not know, under the command's own usage, with the closest
    option for each typo (``--txt`` -> ``--text``); exits with status 2 as argparse does."""
    command = _deepest_parser(parser, argv)
    options = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
    said = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6) if arg.startswith("-") else []
        said.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    command.error("unrecognized arguments: " + " ".join(said))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regionprompt`` script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    parser = build_parser([command] if command else [])
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, argv, unknown)
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
