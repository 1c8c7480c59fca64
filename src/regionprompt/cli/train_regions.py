"""``regionprompt train regions``: RegionCLIP region-text pretraining of the student from pseudo labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.cli.train import add_config_options, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    from regionprompt.train.regions import RegionPretrainConfig

    parser = commands.add_parser(
        "regions",
        help="RegionCLIP student: region-text pretraining from the teacher's pseudo labels",
        description="Train the student (a copy of the teacher; teacher and text side frozen) on pseudo labels "
        "(regionprompt pseudo-label) with three losses at temperature --temperature: region distillation "
        "KL(p_teacher || p_student) over the concept pool, region-concept contrastive (regions sharing a concept "
        "are positives) and whole-image vs caption contrastive. --distill-weight / --contrastive-weight / "
        "--image-text-weight 0 drop a loss (ablations). Checkpoints every --checkpoint-every steps into --out; "
        "rerun the same command to resume. The student is written to OUT/model with the teacher's card.",
    )
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher that made the pseudo labels")
    parser.add_argument("--labels", type=Path, required=True, help="pseudo-label folder (regionprompt pseudo-label --out)")
    parser.add_argument("--cache", type=Path, required=True, help="the scene cache the pseudo labels were made on")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final model)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    add_config_options(parser, RegionPretrainConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.train.regions import RegionPretrainConfig, train_regions
    from regionprompt.vl.embeddings import EmbeddingCache

    torch.set_num_threads(args.threads)
    config = config_from_args(args, RegionPretrainConfig)
    result = train_regions(config, args.out, teacher=args.teacher, labels_dir=args.labels, cache_dir=args.cache,
                           embedding_cache=EmbeddingCache(args.out / "embeddings.sqlite"))
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k != "grad_norm")
    print(f"trained {result.step} steps ({'finished' if result.finished else 'stopped'}) in {result.seconds:.0f} s; "
          f"last losses: {losses}; student: {args.out / 'model'}")
    return 0
