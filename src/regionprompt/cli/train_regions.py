"""``regionprompt train regions``: RegionCLIP region-text pretraining of the student from pseudo labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.cli.train import (
    add_config_options,
    add_run_options,
    print_run,
    start_run,
)


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
    add_run_options(parser, scene_cache=None, device=True)
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop after this many steps (checkpointed; rerun to continue)")
    add_config_options(parser, RegionPretrainConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from regionprompt.train.regions import RegionPretrainConfig, train_regions
    from regionprompt.vl.embeddings import EmbeddingCache

    from regionprompt.train.distributed import distributed_session

    config = start_run(args, RegionPretrainConfig)
    with distributed_session(args.device) as dist_ctx:
        result = train_regions(config, args.out, teacher=args.teacher, labels_dir=args.labels, cache_dir=args.cache,
                               embedding_cache=EmbeddingCache(args.out / "embeddings.sqlite"), device=args.device,
                               max_steps_this_run=args.max_steps_this_run)
    if dist_ctx.is_main:
        print_run(result, args.out, all_losses=True, what="student")
    return 0
