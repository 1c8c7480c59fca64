"""``regionprompt convert`` (COCO <-> YOLO) and ``regionprompt dataset check`` (validation report)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from regionprompt.data.captions import read_captions
from regionprompt.data.convert import DatasetFormat, convert_dataset, load_categories, read_source
from regionprompt.data.files import ImageMode
from regionprompt.data.validate import ValidationReport
from regionprompt.errors import DatasetError

_FORMATS = [f.value for f in DatasetFormat]


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="convert a detection dataset between COCO and YOLO",
        description=(
            "Convert a detection dataset. COCO input: SRC is the instances JSON (images are looked for next "
            "to it, or pass --images). YOLO input: SRC is the folder with data.yaml (all its splits unless "
            "--split). COCO output: OUT/annotations/instances_<split>.json + OUT/<split>/; YOLO output: "
            "OUT/data.yaml + OUT/images/<split>/ + OUT/labels/<split>/. Images are hardlinked when possible, "
            "else copied. iscrowd boxes are left out of YOLO output unless --include-crowd."
        ),
    )
    convert.add_argument("src", type=Path, help="COCO JSON file, or YOLO folder / data.yaml")
    convert.add_argument("--from", dest="src_format", choices=_FORMATS, required=True, help="input format")
    convert.add_argument("--to", dest="dst_format", choices=_FORMATS, required=True, help="output format")
    convert.add_argument("--out", type=Path, required=True, help="output dataset folder")
    convert.add_argument("--images", type=Path, default=None, help="image folder of a COCO input (default: guessed)")
    convert.add_argument("--split", default=None, help="split name (COCO input: output folder name; YOLO input: split to read)")
    convert.add_argument("--skip-invalid", action="store_true", help="drop bad items, clip boxes outside the image, report counts")
    convert.add_argument("--include-crowd", action="store_true", help="write iscrowd boxes to YOLO labels as ordinary boxes")
    convert.add_argument(
        "--categories", type=Path, default=None,
        help="COCO JSON (or JSON list) whose categories give the ids of YOLO class names, matched by name",
    )
    images = convert.add_mutually_exclusive_group()
    images.add_argument("--copy-images", action="store_const", dest="image_mode", const=ImageMode.COPY, help="copy images instead of hardlinking")
    images.add_argument("--no-images", action="store_const", dest="image_mode", const=ImageMode.NONE, help="write annotations only")
    convert.set_defaults(func=run_convert, image_mode=ImageMode.LINK)

    dataset = subparsers.add_parser("dataset", help="inspect datasets", description="Inspect and validate datasets.")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    check = dataset_sub.add_parser(
        "check",
        help="validate a COCO, YOLO or captions dataset and print a report",
        description=(
            "Check a dataset for malformed files, wrong field types, duplicate or unknown ids, missing or unreadable "
            "images, zero-area boxes and boxes outside their image. Exit code 0 when clean, 1 when problems were found, "
            "2 when a file cannot be read at all (syntax error, wrong encoding or structure)."
        ),
    )
    check.add_argument("path", type=Path, help="COCO JSON, YOLO folder / data.yaml, or captions .json/.jsonl")
    check.add_argument("--format", dest="fmt", choices=[*_FORMATS, "captions"], required=True, help="dataset format")
    check.add_argument("--images", type=Path, default=None, help="image folder of a COCO dataset (default: guessed)")
    check.add_argument("--split", default=None, help="YOLO split to check (default: all in data.yaml)")
    check.add_argument("--examples", type=int, default=5, help="examples printed per problem kind (default 5)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=run_check)


def _print_reports(reports: list[ValidationReport], *, examples: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return
    for report in reports:
        print(report.summary(max_examples=examples))


def run_convert(args: argparse.Namespace) -> int:
    if not args.src.exists():
        raise DatasetError(f"{args.src}: not found")
    categories = load_categories(args.categories) if args.categories else None
    results = convert_dataset(
        args.src,
        src_format=args.src_format,
        dst_format=args.dst_format,
        out=args.out,
        image_dir=args.images,
        split=args.split,
        images=args.image_mode,
        categories=categories,
        skip_invalid=args.skip_invalid,
        include_crowd=args.include_crowd,
    )
    for result in results:
        if not result.report.ok:
            print(result.report.summary())
        crowd = f", {result.crowd_skipped} iscrowd boxes left out" if result.crowd_skipped else ""
        print(f"{result.split}: wrote {result.images} images, {result.boxes} boxes, {result.categories} categories{crowd} -> {result.path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    if not args.path.exists():
        raise DatasetError(f"{args.path}: not found")
    # A file that cannot be read at all (syntax error, wrong encoding, wrong top-level structure) raises
    # DatasetError: one ``error:`` line on stderr and exit 2, as every other command. Exit 1 is kept for
    # a readable dataset with problems, whose report goes to stdout.
    if args.fmt == "captions":
        reports = [read_captions(args.path, skip_invalid=True).report]
    else:
        sources = read_source(args.path, args.fmt, image_dir=args.images, split=args.split, skip_invalid=True)
        reports = [s.report for s in sources]
    _print_reports(reports, examples=args.examples, as_json=args.json)
    return 0 if all(r.ok for r in reports) else 1
