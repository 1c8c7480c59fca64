"""``regionprompt train rpn``: the class-agnostic proposal network on EmojiWorld det-train base boxes."""

from __future__ import annotations

import argparse

from regionprompt.cli.train import (
    add_config_options,
    add_run_options,
    print_run,
    start_run,
)


def _train_rpn(args: argparse.Namespace) -> int:
    from regionprompt.train.rpn import RpnTrainConfig, train_rpn

    config = start_run(args, RpnTrainConfig)
    print_run(train_rpn(config, args.out, cache_dir=args.cache, workers=args.workers), args.out)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
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
    add_run_options(parser, scene_cache="det-train scene cache")
    add_config_options(parser, RpnTrainConfig)
    parser.set_defaults(func=_train_rpn)
