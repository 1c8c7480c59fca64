"""Pseudo-labelling throughput (regions scored by the teacher per second) on this machine.

Runs the real pipeline (:func:`regionprompt.regionclip.pseudo_labels.pseudo_label`: proposals ->
RoIAlign on res4 -> res5 -> attention pool -> cosine vs the pool -> softmax -> shards on disk) on
freshly rendered pretrain scenes, with oracle proposals padded by random boxes up to
``--proposals`` per image, against the 1,177 EmojiWorld concept names. Concept embedding is done
before the clock starts. Prints one row per (image size, proposals) setting.

    python benchmarks/bench_pseudo_label.py --sizes 128 256 --proposals 50 100 --images 16
    python benchmarks/bench_pseudo_label.py --teacher runs/teacher-clip-v2/model
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.regionclip.oracle import SceneBoxProposals
from regionprompt.regionclip.pseudo_labels import PseudoLabelConfig, pseudo_label
from regionprompt.vl.clip_model import build_clip
from regionprompt.vl.embeddings import EmbeddingCache
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=None, help="teacher folder (default: a random RN-tiny)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="scene-cache image sides")
    parser.add_argument("--proposals", type=int, nargs="+", default=[50, 100], help="proposals per image")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--templates", default="single")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("REGIONPROMPT_NO_PROGRESS", "1")
    torch.manual_seed(0)
    teacher = load_checkpoint(args.teacher) if args.teacher else build_clip("RN-tiny").eval()
    names = list(load_concepts().names)
    print(f"teacher={teacher.card.name} threads={args.threads} images={args.images} pool={len(names)} templates={args.templates}")
    print(f"{'px':>5} {'proposals':>9} {'regions/s':>10} {'ms/region':>10} {'images/s':>9} {'kept':>6} {'20k scenes':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        embeddings = EmbeddingCache(Path(tmp) / "embeddings.sqlite")
        for size in args.sizes:
            cache = build_scene_cache(SceneCacheSpec("pretrain", 0, args.images, size), Path(tmp) / f"cache{size}", workers=1)
            for proposals in args.proposals:
                # Pad the true boxes with random ones so every image scores exactly `proposals` regions.
                source = SceneBoxProposals(cache, jittered_per_object=2, random_boxes=proposals)
                config = PseudoLabelConfig(templates=args.templates, max_proposals=proposals)
                out = Path(tmp) / f"labels{size}_{proposals}"
                pseudo_label(teacher, source, cache, names, out, config, proposal_id=source.identity, max_images=1,
                             embedding_cache=embeddings)  # warm-up: embeddings, allocators
                run = pseudo_label(teacher, source, cache, names, out, config, proposal_id=source.identity,
                                   embedding_cache=embeddings)
                rate = run.regions_per_second
                hours = 20000 * run.seconds / run.images / 3600
                print(f"{size:>5} {proposals:>9} {rate:>10.1f} {1000 / rate:>10.2f} {run.images / run.seconds:>9.2f} "
                      f"{run.regions / max(run.proposals, 1):>6.0%} {hours:>9.1f} h")
    print("regions/s: proposals scored by the teacher per second (batch of one image; see pseudo_labels.py).")


if __name__ == "__main__":
    main()
