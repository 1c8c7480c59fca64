"""``regionprompt data shard``: image-caption pairs -> WebDataset tar shards (the img2dataset layout)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare training data (WebDataset shards)",
                                   description="Prepare training data at scale.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    shard = actions.add_parser(
        "shard",
        help="write image-caption pairs as WebDataset tar shards",
        description="Read a COCO captions JSON or a JSON-lines captions file and write OUT/PREFIX-NNNNN.tar shards "
        "(KEY.jpg + KEY.txt + KEY.json per image, the layout img2dataset writes) and OUT/shards.json. Image bytes are "
        "copied unchanged. Rerunning keeps the shards already written. `train clip --shards OUT` streams them.",
    )
    shard.add_argument("captions", type=Path, help="COCO captions .json or .jsonl")
    shard.add_argument("--images", type=Path, required=True, help="folder the captions' file names are relative to")
    shard.add_argument("--out", type=Path, required=True, help="shard folder")
    shard.add_argument("--samples-per-shard", type=int, default=1000, help="images per tar (default 1000)")
    shard.add_argument("--prefix", default="shard", help="shard file name prefix (default shard)")
    shard.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    from regionprompt.data.captions import read_captions
    from regionprompt.data.webdataset import write_shards
    from regionprompt.untrusted import check_path_name

    check_path_name(args.prefix, what="--prefix", single=True)
    dataset = read_captions(args.captions).data
    entries = write_shards(dataset, args.images, args.out, samples_per_shard=args.samples_per_shard, prefix=args.prefix)
    samples = sum(e["samples"] for e in entries)
    print(f"wrote {samples} images with {dataset.num_captions} captions in {len(entries)} shards -> {args.out}")
    return 0
