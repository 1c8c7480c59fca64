"""``regionprompt concepts extract``: build a concept pool (names + counts) from caption files."""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.errors import DatasetError
from regionprompt.vl.concept_pool import (
    COCO_SYNONYMS,
    DEFAULT_BACKEND,
    build_concept_pool,
    pool_coverage,
    read_caption_units,
    read_json_file,
)
from regionprompt.vl.nouns import BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "concepts",
        help="concept pools mined from captions (RegionCLIP step 1)",
        description="Build and inspect concept pools: noun phrases mined from image captions.",
    )
    commands = parser.add_subparsers(dest="concepts_command", metavar="ACTION")
    extract = commands.add_parser(
        "extract",
        help="parse captions into a concept pool file",
        description=(
            "Parse noun phrases from caption files (COCO captions .json, .jsonl with 'caption'/'captions', or "
            "plain text with one caption per line), singularise them, count each once per image, keep those "
            "seen in at least --min-count images and write POOL.json: {version, source, backend, min_count, "
            "concepts: [{name, count}]} sorted by count then name."
        ),
    )
    extract.add_argument("captions", nargs="+", type=Path, metavar="CAPTIONS", help="caption file(s)")
    extract.add_argument("--out", required=True, type=Path, help="pool file to write (JSON)")
    extract.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help=f"noun-phrase parser: spaCy noun chunks or the parser-free rules (default {DEFAULT_BACKEND})",
    )
    extract.add_argument("--min-count", type=int, default=5, help="keep phrases seen in at least N images (default 5)")
    extract.add_argument("--max-concepts", type=int, help="keep at most K concepts, the most frequent")
    extract.add_argument(
        "--max-words", type=int, default=3, help="longest phrase kept, head noun included (default 3)"
    )
    extract.add_argument(
        "--coverage",
        type=Path,
        metavar="NAMES.json",
        help="report which names of this list the pool contains: a JSON list of names, or of objects with "
        "'name' (COCO categories); COCO class names also match through a built-in synonym list",
    )
    extract.add_argument("--top", type=int, default=20, help="print the N most frequent concepts (default 20)")
    extract.set_defaults(func=run_extract)
    parser.set_defaults(func=lambda _args: parser.print_help() or 1)


def _load_names(path: Path) -> list[str]:
    data = read_json_file(path, "name list")
    if isinstance(data, dict) and isinstance(data.get("categories"), list):
        data = data["categories"]
    names = [item.get("name") if isinstance(item, dict) else item for item in data] if isinstance(data, list) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: expected a JSON list of names or of objects with a 'name'")
    return names


def run_extract(args: argparse.Namespace) -> int:
    from regionprompt.vl.nouns import make_extractor

    names = _load_names(args.coverage) if args.coverage else None
    units = [unit for path in args.captions for unit in read_caption_units(path)]
    if not units:
        raise DatasetError(f"no captions found in {', '.join(map(str, args.captions))}")
    pool, stats = build_concept_pool(
        units,
        backend=make_extractor(args.backend, max_words=args.max_words),
        min_count=args.min_count,
        max_concepts=args.max_concepts,
        source=", ".join(p.name for p in args.captions),
    )
    pool.save(args.out)
    print(
        f"captions: {stats.captions} ({stats.units} images/units)\n"
        f"unique phrases: {stats.unique_phrases}\n"
        f"kept concepts: {stats.kept} (count >= {args.min_count}, backend {pool.backend})\n"
        f"time: {stats.seconds:.1f} s\n"
        f"wrote {args.out}"
    )
    if args.top > 0 and len(pool):
        top = ", ".join(f"{n} ({c})" for n, c in zip(pool.names[: args.top], pool.counts[: args.top]))
        print(f"top {min(args.top, len(pool))}: {top}")
    if names is not None:
        cov = pool_coverage(pool, names, COCO_SYNONYMS)
        print(f"coverage of {args.coverage.name}: exact {len(cov.exact)}/{cov.total}, with synonyms {cov.with_synonyms}/{cov.total}")
        if cov.via_synonym:
            print("  via synonym: " + ", ".join(f"{k} -> {v}" for k, v in cov.via_synonym.items()))
        if cov.missing:
            print("  missing: " + ", ".join(cov.missing))
    return 0
