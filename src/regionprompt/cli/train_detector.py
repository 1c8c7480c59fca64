"""``regionprompt train detector --arch trex2|regionclip``: train a detector on EmojiWorld det-train.

The two architectures have different recipes whose options share names with different defaults
(``--steps``, ``--lr``, ``--image-size``...), so each has its own option parser: the registered
``detector`` parser is T-Rex2's (the default architecture, unchanged), and when the arguments say
``--arch regionclip`` they are parsed by the RegionCLIP parser instead (``--help`` included).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regionprompt.cli.train import (
    add_config_options,
    add_run_options,
    print_run,
    start_run,
)
from regionprompt.errors import RegionPromptError

ARCHITECTURES = ("trex2", "regionclip")


def _train_detector(args: argparse.Namespace) -> int:
    if args.arch != "trex2":
        # Reached only when --arch was abbreviated, so the T-Rex2 options were parsed.
        raise RegionPromptError(f"write the architecture option in full (--arch {args.arch}) so that its own "
                                "options are used")
    from regionprompt.train.trex2 import TRex2TrainConfig, train_trex2
    from regionprompt.vl.embeddings import EmbeddingCache

    config = start_run(args, TRex2TrainConfig)
    text_cache = None if args.no_text_cache else EmbeddingCache(args.text_cache)
    result = train_trex2(config, args.out, cache_dir=args.cache, workers=args.workers, text_cache=text_cache,
                         max_steps_this_run=args.max_steps_this_run, init=args.init, device=args.device)
    print_run(result, args.out)
    return 0


def _train_regionclip(args: argparse.Namespace) -> int:
    from regionprompt.train.ov_transfer import (
        RegionClipTransferConfig,
        train_regionclip_detector,
    )
    from regionprompt.vl.embeddings import EmbeddingCache

    config = start_run(args, RegionClipTransferConfig)
    text_cache = None if args.no_text_cache else EmbeddingCache(args.text_cache)
    result = train_regionclip_detector(config, args.out, clip=args.clip, rpn=args.rpn, cache_dir=args.cache,
                                       workers=args.workers, text_cache=text_cache,
                                       max_steps_this_run=args.max_steps_this_run, device=args.device,
                                       caption_cache_dir=args.caption_cache)
    print_run(result, args.out, what="detector")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-cache", type=Path, default=None,
                        help="prompt-embedding cache file (default: the user cache, see regionprompt.vl.embeddings)")
    parser.add_argument("--no-text-cache", action="store_true", help="recompute text embeddings, store nothing")
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop after this many steps (resume later with the same command)")


def regionclip_parser(prog: str = "regionprompt train detector") -> argparse.ArgumentParser:
    """The options of ``train detector --arch regionclip``."""
    from regionprompt.train.ov_transfer import RegionClipTransferConfig

    parser = argparse.ArgumentParser(
        prog=prog,
        description="RegionCLIP open-vocabulary transfer: fine-tune the CLIP image tower (res4, res5, attention "
        "pool) of --clip (a teacher or RegionCLIP student CLIP folder) into a detector on the base-concept boxes "
        "of EmojiWorld det-train: proposals of the frozen --rpn plus the ground-truth boxes, RoIs labelled by "
        "IoU >= --fg-iou, region embeddings scored against the frozen text embeddings of the base class names and "
        "a learned background embedding (cosine / --temperature), focal-scaled cross-entropy with the background "
        "weighted by --background-weight. Checkpoints into --out; rerun the same command to resume. The final "
        "detector folder (clip/, rpn/, background.safetensors, detector.json with background 'learned') is "
        "written to OUT/model; load it with Detector.load or --model.",
    )
    parser.add_argument("--arch", choices=ARCHITECTURES, default="regionclip", help="detector architecture")
    parser.add_argument("--clip", type=Path, required=True, help="CLIP model folder to fine-tune (teacher or student)")
    parser.add_argument("--rpn", type=Path, required=True, help="trained proposal network folder (stays frozen)")
    add_run_options(parser, scene_cache="det-train scene cache", device=True)
    parser.add_argument("--caption-cache", type=Path, default=None,
                        help="iconic pretrain scene cache of the caption term (--caption-weight > 0; default "
                        "OUT/caption_cache, rendered when missing)")
    _add_common(parser)
    add_config_options(parser, RegionClipTransferConfig)
    parser.set_defaults(func=_train_regionclip)
    return parser


def _named_arch(args: Sequence[str]) -> str | None:
    """The value of ``--arch`` in ``args`` (the last one wins, as in argparse), or ``None``."""
    arch = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--arch" and i + 1 < len(args):
            arch = args[i + 1]
        elif arg.startswith("--arch="):
            arch = arg.split("=", 1)[1]
    return arch


def register(commands: argparse._SubParsersAction) -> None:
    from regionprompt.train.trex2 import TRex2TrainConfig

    parser = commands.add_parser(
        "detector",
        help="train a detector on EmojiWorld det-train: T-Rex2 (--arch trex2) or RegionCLIP transfer (--arch regionclip)",
        description="T-Rex2 training: text, box and point prompt iterations (--text-warmup-steps text-only "
        "steps, then --cycle repeated: t text, b box, p point), Hungarian-matched focal + L1 + GIoU losses, "
        "denoising queries, text-visual alignment, negatives from the batch. --clip is a CLIP model folder "
        "(pretrained backbone and frozen text side) or a card name (random init). Checkpoints into --out; "
        "rerun the same command to resume. The final model is written to OUT/model (safetensors + card.json). "
        "With --arch regionclip the options are those of the RegionCLIP transfer instead: see "
        "`regionprompt train detector --arch regionclip --help`.",
    )
    parser.add_argument("--arch", choices=ARCHITECTURES, default="trex2", help="detector architecture")
    add_run_options(parser, scene_cache="det-train scene cache", device=True)
    _add_common(parser)
    add_config_options(parser, TRex2TrainConfig)
    parser.add_argument("--init", type=Path, default=None, metavar="DIR",
                        help="start from this trained T-Rex2 model folder (fine-tuning, or continuing a finished run "
                        "with a new schedule); its architecture options must match")
    parser.set_defaults(func=_train_detector)

    trex2_parse = parser.parse_known_args
    regionclip: list[argparse.ArgumentParser] = []  # built on first use: its config import costs time

    def parse_known_args(args: Sequence[str] | None = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        # The subcommand action hands this parser the arguments after "detector"; route them by --arch.
        if args is not None and _named_arch(list(args)) == "regionclip":
            if not regionclip:
                regionclip.append(regionclip_parser(parser.prog))
            return regionclip[0].parse_known_args(args, namespace)
        return trex2_parse(args, namespace)

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
