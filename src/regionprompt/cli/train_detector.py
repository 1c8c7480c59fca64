"""``regionprompt train detector --arch trex2``: train a promptable detector on EmojiWorld det-train."""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.cli.train import add_config_options, config_from_args

ARCHITECTURES = ("trex2",)


def _train_detector(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.train.trex2 import TRex2TrainConfig, train_trex2
    from regionprompt.vl.embeddings import EmbeddingCache

    torch.set_num_threads(args.threads)
    config = config_from_args(args, TRex2TrainConfig)
    text_cache = None if args.no_text_cache else EmbeddingCache(args.text_cache)
    result = train_trex2(config, args.out, cache_dir=args.cache, workers=args.workers, text_cache=text_cache,
                         max_steps_this_run=args.max_steps_this_run)
    state = "finished" if result.finished else "stopped (rerun the same command to resume)"
    print(f"trained {result.step} steps ({state}) in {result.seconds:.0f} s; "
          f"last loss {result.metrics.get('loss', float('nan')):.4f}; model: {args.out / 'model'}")
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
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final model)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="pre-rendered det-train scene cache folder (default OUT/scene_cache)")
    parser.add_argument("--text-cache", type=Path, default=None,
                        help="prompt-embedding cache file (default: the user cache, see regionprompt.vl.embeddings)")
    parser.add_argument("--no-text-cache", action="store_true", help="recompute text embeddings, store nothing")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (default 2); use 1 while other jobs share the CPU: with 2 threads on a "
                        "loaded 2-core machine a step took 10x longer")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the scene cache (default 2)")
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop after this many steps (resume later with the same command)")
    add_config_options(parser, TRex2TrainConfig)
    parser.set_defaults(func=_train_detector)
