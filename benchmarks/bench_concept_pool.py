"""Concept-pool backends on real COCO captions: speed, COCO-80 coverage, agreement, top concepts.

Usage::

    python benchmarks/bench_concept_pool.py [--captions PATH] [--categories PATH] [--min-count 5] [--top 50]

Prints a markdown table (one row per backend) and each backend's top concepts. Timings are parse +
count wall time on this machine; model loading is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from regionprompt.vl.concept_pool import COCO_SYNONYMS, build_concept_pool, pool_coverage, read_caption_units
from regionprompt.vl.nouns import BACKENDS, make_extractor

SHARED = Path(os.environ.get("REGIONPROMPT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, default=SHARED / "coco_captions_val2017" / "captions_val2017.json")
    parser.add_argument("--categories", type=Path, default=SHARED / "metadata" / "coco80_categories.json")
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--top", type=int, default=50)
    args = parser.parse_args()

    os.environ.setdefault("REGIONPROMPT_NO_PROGRESS", "1")
    units = read_caption_units(args.captions)
    names = [c["name"] for c in json.loads(args.categories.read_text(encoding="utf-8"))]
    rows, pools = [], {}
    for backend in BACKENDS:
        start = time.perf_counter()
        extractor = make_extractor(backend)
        load_s = time.perf_counter() - start
        pool, stats = build_concept_pool(units, backend=extractor, min_count=args.min_count, source=args.captions.name, show_progress=False)
        cov = pool_coverage(pool, names, COCO_SYNONYMS)
        pools[backend] = pool
        rows.append(
            f"| {backend} | {stats.captions} | {load_s:.1f} | {stats.seconds:.1f} | {stats.captions / stats.seconds:,.0f} "
            f"| {stats.unique_phrases} | {stats.kept} | {len(cov.exact)}/{cov.total} | {cov.with_synonyms}/{cov.total} "
            f"| {', '.join(cov.missing) or '-'} |"
        )
    print(f"captions: {args.captions} ({len(units)} images), min_count {args.min_count}\n")
    print("| backend | captions | load s | parse+count s | captions/s | unique phrases | kept | COCO-80 exact | + synonyms | missing |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    a, b = (pools[name] for name in BACKENDS)
    for k in (100, 500, len(a)):
        top_a, top_b = set(a.names[:k]), set(b.names[:k])
        print(f"\ntop-{k} overlap {BACKENDS[0]}/{BACKENDS[1]}: {len(top_a & top_b) / max(len(top_a | top_b), 1):.2f} (Jaccard)", end="")
    print()
    for name, pool in pools.items():
        only = [n for n in pool.names[:200] if n not in pools[BACKENDS[1] if name == BACKENDS[0] else BACKENDS[0]]]
        print(f"\n{name} top {args.top}: " + ", ".join(f"{n} ({c})" for n, c in zip(pool.names[: args.top], pool.counts)))
        print(f"{name} top-200 concepts missing from the other pool: {', '.join(only) or '-'}")


if __name__ == "__main__":
    main()
