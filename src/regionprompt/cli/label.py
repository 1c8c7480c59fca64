"""``regionprompt label``: auto-label a folder of images into a COCO or YOLO dataset (resumable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regionprompt.autolabel import FORMATS, REPORT_FILE, label_folder
from regionprompt.cli.detect import (
    add_prompt_options,
    check_prompt_options,
    has_prompts,
    load_detector,
    prompt_arguments,
)
from regionprompt.errors import PromptError
from regionprompt.sharding import parse_shard, shard_from_torchrun
from regionprompt.untrusted import check_path_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label",
        help="auto-label a folder of images into a COCO or YOLO dataset (resumes after interruption)",
        description=(
            "Detect the prompted categories in every image under FOLDER (recursively) and write a dataset to OUT: "
            "COCO (OUT/annotations.json, file names relative to FOLDER, a 'score' per annotation) or YOLO "
            "(OUT/data.yaml, OUT/labels/SPLIT, images linked into OUT/images/SPLIT). Progress is journalled per "
            "image: after a kill, rerun the same command to continue (no image lost or labelled twice). "
            f"Unreadable images are skipped and listed in OUT/{REPORT_FILE}. Exemplar boxes and points need "
            "--box-image."
        ),
    )
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="folder of images")
    add_prompt_options(parser)
    parser.add_argument("--format", choices=FORMATS, default="coco", help="dataset format (default coco)")
    parser.add_argument("--split", default="train", help="YOLO split folder name (default train)")
    parser.add_argument("--images", choices=("link", "copy", "none"), default="link",
                        help="YOLO: put images into OUT by hardlink (else copy), copy, or not at all (default link)")
    parser.add_argument("--all-labels", action="store_true",
                        help="keep one annotation per category that finds an object (default: class-agnostic NMS, "
                        "each object labelled once with its best category)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                        help="label only image k with k %% N == I (of the sorted list) into its own journal, for N "
                        "independent jobs; then run once without --shard to merge them into the dataset. Under "
                        "torchrun the ranks shard themselves and rank 0 merges")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not has_prompts(args):
        raise PromptError("no prompt given: use --text, --box/--point with --box-image, or --concept")
    if (args.box or args.point or args.negative_box) and args.box_image is None:
        raise PromptError("label: --box, --point and --negative-box need --box-image, the image they were drawn on")
    # Refused before the model loads: the split names folders under --out (never outside it).
    check_path_name(args.split, what="--split", single=True)
    check_prompt_options(args)
    detector = load_detector(args)
    concepts = []
    if args.text or args.box or args.point:
        concepts = detector.make_concepts(**prompt_arguments(args, args.box_image))
    elif args.negative_text:
        raise PromptError("--negative-text needs a --text, --box or --point category (a concept has its own negatives)")
    concepts += detector.resolve_concepts(args.concept)
    options = dict(threshold=args.threshold, fmt=args.format, split=args.split, images=args.images,
                   one_label_per_box=not args.all_labels)
    ranks = shard_from_torchrun() if args.shard is None else None
    try:
        if ranks is not None:  # torchrun: every rank labels its shard, then rank 0 merges
            from regionprompt.train.distributed import barrier, distributed_session

            with distributed_session("cpu"):
                label_folder(detector, args.folder, args.out, concepts, shard=ranks, **options)
                barrier()
                if ranks.index:
                    return 0
                report = label_folder(detector, args.folder, args.out, concepts, **options)
        else:
            report = label_folder(detector, args.folder, args.out, concepts, shard=args.shard, **options)
    except KeyboardInterrupt:
        print(f"interrupted: progress is saved in {args.out}; rerun the same command to continue", file=sys.stderr)
        raise
    if args.shard is not None:
        print(f"shard {args.shard}: {report.labelled} of {report.images} images labelled ({report.resumed} from an "
              f"earlier run): {report.detections} boxes; run without --shard once every shard is done to write the "
              "dataset")
        return 0
    print(f"labelled {report.labelled} of {report.images} images ({report.resumed} from an earlier run): "
          f"{report.detections} boxes -> {args.out}")
    for name, count in report.per_category.items():
        print(f"  {name}: {count}")
    if report.unreadable:
        print(f"{len(report.unreadable)} unreadable images skipped (listed in {args.out / REPORT_FILE}):", file=sys.stderr)
        for item in report.unreadable[:10]:
            print(f"  {item['error']}", file=sys.stderr)
    return 0
