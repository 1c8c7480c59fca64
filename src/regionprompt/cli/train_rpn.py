"""``regionprompt train rpn``: the class-agnostic proposal network on EmojiWorld det-train base boxes."""

from __future__ import annotations

import argparse
from pathlib import Path


def _train_rpn(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.cli.train import config_from_args
    from regionprompt.train.rpn import RpnTrainConfig, train_rpn

    torch.set_num_threads(args.threads)
    config = config_from_args(args, RpnTrainConfig)
    result = train_rpn(config, args.out, cache_dir=args.cache, workers=args.workers)
    print(f"trained {result.step} steps ({'finished' if result.finished else 'stopped'}) in {result.seconds:.0f} s; "
          f"last loss {result.metrics.get('loss', float('nan')):.4f}; model: {args.out / 'model'}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from regionprompt.cli.train import add_config_options
    from regionprompt.train.rpn import RpnTrainConfig

    parser = commands.add_parser(
        "rpn",
        help="class-agnostic region proposal network (ResNet + FPN + RPN) on det-train base boxes",
        description="Train the proposal network on EmojiWorld det-train scenes, using only the labelled boxes "
        "(base concepts; novel objects stay unlabelled background, the open-vocabulary protocol), with "
        "horizontal flips. AdamW, warm-up + cosine, gradient clipping. Checkpoints every --checkpoint-every "
        "steps into --out; rerun the same command to resume. The final model is written to OUT/model "
        "(model.safetensors + card.json); measure it with `regionprompt eval-proposals`.",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final model)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="pre-rendered det-train scene cache folder (default OUT/scene_cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the scene cache (default 2)")
    add_config_options(parser, RpnTrainConfig)
    parser.set_defaults(func=_train_rpn)
