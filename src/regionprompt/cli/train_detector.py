"""``regionprompt train detector --arch trex2``: train a promptable detector on EmojiWorld det-train."""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.cli.train import (
    add_config_options,
    add_run_options,
    print_run,
    start_run,
)

ARCHITECTURES = ("trex2",)


def _train_detector(args: argparse.Namespace) -> int:
    from regionprompt.train.trex2 import TRex2TrainConfig, train_trex2
    from regionprompt.vl.embeddings import EmbeddingCache

    config = start_run(args, TRex2TrainConfig)
    text_cache = None if args.no_text_cache else EmbeddingCache(args.text_cache)
    result = train_trex2(config, args.out, cache_dir=args.cache, workers=args.workers, text_cache=text_cache,
                         max_steps_this_run=args.max_steps_this_run)
    print_run(result, args.out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from regionprompt.train.trex2 import TRex2TrainConfig

    parser = commands.add_parser(
        "detector",
        help="train a promptable detector (T-Rex2) on EmojiWorld det-train",
        description="T-Rex2 training: text, box and point prompt iterations (--text-warmup-steps text-only "
        "steps, then --cycle repeated: t text, b box, p point), Hungarian-matched focal + L1 + GIoU losses, "
        "denoising queries, text-visual alignment, negatives from the batch. --clip is a CLIP model folder "
        "(pretrained backbone and frozen text side) or a card name (random init). Checkpoints into --out; "
        "rerun the same command to resume. The final model is written to OUT/model (safetensors + card.json).",
    )
    parser.add_argument("--arch", choices=ARCHITECTURES, default="trex2", help="detector architecture")
    add_run_options(parser, scene_cache="det-train scene cache")
    parser.add_argument("--text-cache", type=Path, default=None,
                        help="prompt-embedding cache file (default: the user cache, see regionprompt.vl.embeddings)")
    parser.add_argument("--no-text-cache", action="store_true", help="recompute text embeddings, store nothing")
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop after this many steps (resume later with the same command)")
    add_config_options(parser, TRex2TrainConfig)
    parser.set_defaults(func=_train_detector)
