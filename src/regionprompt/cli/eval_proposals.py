"""``regionprompt eval-proposals``: average recall of a proposal network on base and novel objects."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-proposals",
        help="average recall (AR@100/300, recall@0.5) of a proposal network, base vs novel objects",
        description="Run a trained proposal network (a folder from `regionprompt train rpn`: model.safetensors + "
        "card.json) on every image of a COCO ground truth whose categories carry 'split' (an EmojiWorld build, "
        "e.g. `regionprompt world build --split test --images 300 --seed 1 --out DIR`) and report COCO average "
        "recall (mean recall over IoU 0.50:0.95) and recall at IoU 0.5, for base, novel and all objects and by "
        "object size. Prints a markdown table; --out writes the JSON report (and a .md next to it).",
    )
    parser.add_argument("--model", type=Path, required=True, help="proposal network folder (OUT/model of train rpn)")
    parser.add_argument("--gt", type=Path, required=True, help="COCO instances JSON (e.g. DIR/annotations.json)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of the images (default: the JSON's folder or its images/ subfolder)")
    parser.add_argument("--limits", type=int, nargs="+", default=[100, 300], help="proposals per image (default 100 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here (and REPORT.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.data.files import atomic_write_text, dump_json
    from regionprompt.detect.rpn import ProposalNetwork
    from regionprompt.errors import EvaluationError
    from regionprompt.eval.proposals import evaluate_proposals

    torch.set_num_threads(args.threads)
    model = ProposalNetwork.load(args.model)
    report = evaluate_proposals(model, args.gt, image_root=args.images, limits=args.limits, batch_size=args.batch_size)
    markdown = report.to_markdown()
    if args.out is not None:
        try:
            data = {"model": str(args.model), "model_name": model.card.name, "gt": str(args.gt), **report.to_dict()}
            atomic_write_text(args.out, dump_json(data, indent=2))
            atomic_write_text(args.out.with_suffix(".md"), markdown)
        except OSError as exc:
            raise EvaluationError(f"cannot write the report to {args.out}: {exc}") from None
    print(markdown, end="")
    return 0
