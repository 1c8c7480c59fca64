"""Cost of one T-Rex2 training step (forward parts, backward, optimizer) per iteration kind, float32
against bfloat16 autocast (``--amp``) in one run, and the training throughput (images/s) of each.

Prints wall seconds and process CPU seconds (all threads): on a shared machine the wall time depends
on the other jobs, the CPU time much less, and CPU time / threads estimates the wall time when alone.
The two precisions run interleaved (one step of each in turn), so machine load hits both alike.

    python benchmarks/bench_trex2_step.py [--clip weights/student8-minilm] [--image-size 320] [--steps 3] \
        [--v2]   # the T-Rex2 v2 recipe's levers (paired batches, vocabulary negatives, augmentation)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("REGIONPROMPT_NO_PROGRESS", "1")

import torch

from regionprompt.train.trex2 import (
    SceneBatches,
    TRex2Step,
    TRex2TrainConfig,
    build_model,
    text_table,
)
from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", default="RN-tiny", help="CLIP folder or card name (random init)")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per kind (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="det-train scene cache with >= 16 scenes at --image-size")
    parser.add_argument("--v2", action="store_true", help="with the T-Rex2 v2 levers (paired batches, negatives, augmentation)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    v2 = dict(paired_batches=True, cross_image_prob=0.5, exemplar_mean_prob=0.2, visual_text_negatives=128,
              extra_negatives=100_000, augment=True) if args.v2 else {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache or os.path.join(tmp, "cache")
        n = 16 if args.cache is None else int(json.loads(Path(cache_dir, "spec.json").read_text())["num_images"])
        variants = {}
        for name, amp in (("float32", False), ("bfloat16 autocast", True)):
            config = TRex2TrainConfig(clip=args.clip, image_size=args.image_size, num_scenes=n,
                                      batch_size=args.batch_size, templates="single", text_warmup_steps=0,
                                      cycle="tbp", amp=amp, **v2)
            cache = build_scene_cache(SceneCacheSpec("det-train", config.world_seed, n, args.image_size), cache_dir,
                                      workers=1)
            model = build_model(config)
            batches = SceneBatches(cache, config.batch_size, config.seed, paired=config.paired_batches,
                                   augment=config.augment)
            ids = batches.concept_ids()
            step_losses = TRex2Step(model, config, text_table(model, ids, None), ids)
            optimizer = torch.optim.AdamW(model.head_parameters() + model.backbone_parameters(), lr=1e-5, fused=True)
            model.train()
            variants[name] = (config, batches, step_losses, optimizer)
        rows: dict[tuple[str, str], list[tuple[float, ...]]] = {}
        for step in range(3 * (args.steps + 1)):
            for name, (config, batches, step_losses, optimizer) in variants.items():
                kind = config.iteration_kind(step)
                batch = batches(step)
                clock = Clock()
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp):
                    step_losses.model.encode_images(batch.images)
                encode = clock.lap()
                terms = step_losses.losses(batch, step)
                forward = clock.lap()
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                backward = clock.lap()
                optimizer.step()
                opt = clock.lap()
                if step >= 3:  # the first cycle warms up allocators and caches
                    rows.setdefault((name, kind), []).append((*encode, *forward, *backward, *opt))
    print(f"\nT-Rex2 training step, {args.image_size} px, batch {args.batch_size}, {args.threads} threads, "
          f"backbone {args.clip}{', v2 levers' if args.v2 else ''}; mean of {args.steps} steps; wall s / CPU s")
    print("| precision | kind | image encoding (no grad) | full forward + losses | backward | optimizer | step total |")
    print("|---|---|---:|---:|---:|---:|---:|")
    totals: dict[str, list[float]] = {}
    for (name, kind), values in rows.items():
        mean = [sum(v[i] for v in values) / len(values) for i in range(8)]
        total_wall, total_cpu = sum(mean[2::2]), sum(mean[3::2])
        totals.setdefault(name, []).append(total_wall)
        cells = [f"{mean[i]:.2f} / {mean[i + 1]:.2f}" for i in range(0, 8, 2)]
        print(f"| {name} | {kind} | {' | '.join(cells)} | {total_wall:.2f} / {total_cpu:.2f} |")
    print("\n(step total = forward + backward + optimizer; image encoding is shown separately and is part of the forward)")
    print("\n| precision | mean step (s, wall) | training images / s | vs float32 |")
    print("|---|---:|---:|---:|")
    base = sum(totals["float32"]) / len(totals["float32"])
    for name, walls in totals.items():
        mean = sum(walls) / len(walls)
        print(f"| {name} | {mean:.2f} | {args.batch_size / mean:.2f} | {base / mean:.2f}x |")


if __name__ == "__main__":
    main()
