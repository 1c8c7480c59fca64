"""Diagnostic for the CLIP teacher recipe: is it the captions or the budget?

Trains the same RN-tiny CLIP as ``regionprompt train clip`` on the same cached pretrain scenes, but
with a clean, object-level text for every image -- ``"a <name of the largest object>."`` -- instead of
the scene's captions. This uses object labels, which the pretraining protocol does not allow, so it
is a diagnostic only, never a teacher. If this model recognises objects above chance where the
caption-trained one does not, the captions (not the model size or the budget) are what hold the
teacher back.

    python scripts/diagnose_teacher_captions.py --cache runs/scene_cache_pretrain128 --steps 320 --out runs/diag-largest
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from regionprompt.logging_utils import progress
from regionprompt.train.clip_pretrain import ClipPretrainConfig, build_model, contrastive_loss
from regionprompt.train.schedule import warmup_cosine
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="pretrain scene cache (from `train clip`)")
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    concepts = load_concepts()
    cache = SceneCache(args.cache)
    model = build_model(ClipPretrainConfig(text="clip"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=40, total=args.steps, floor=0.02)
    )

    def largest_name(record: dict) -> str:
        obj = max(record["objects"], key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))
        return f"a {concepts.by_id(obj['concept_id']).name}."

    for step in progress(range(args.steps), desc="diagnostic clip", total=args.steps, unit="step"):
        rng = np.random.default_rng(step)
        index = np.sort(rng.choice(len(cache), args.batch_size, replace=False))
        images = torch.from_numpy(np.array(cache.images[index])).permute(0, 3, 1, 2).float().div_(255.0)
        loss = contrastive_loss(*model(images, [largest_name(cache.records[i]) for i in index]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    model.save(args.out / "model")


if __name__ == "__main__":
    main()
