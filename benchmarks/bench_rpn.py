"""Proposal network speed: images per second of ``ProposalNetwork.propose`` at batch 1 and 8.

Usage::

    python benchmarks/bench_rpn.py [--model runs/rpn/model] [--threads 2] [--images 32] [--size 320]

Without ``--model`` a randomly initialised network of the default training recipe is timed (speed
does not depend on the weights, except through how many boxes survive NMS: a trained model is the
honest measure). Inputs are real EmojiWorld test scenes of ``--size`` px; each row times ``--images``
images after one warm-up call, and reports the median of three repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from regionprompt.detect.rpn import ProposalNetwork
from regionprompt.train.rpn import RpnTrainConfig
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig


def scenes(count: int, size: int) -> torch.Tensor:
    """``(count, 3, size, size)`` test scenes in [0, 1]."""
    renderer = SceneRenderer.default(SceneConfig(size=size))
    pixels = np.stack([np.asarray(renderer.render("test", i, seed=1).image) for i in range(count)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def images_per_second(model: ProposalNetwork, images: torch.Tensor, batch: int, max_proposals: int) -> float:
    model.propose(images[:batch], max_proposals=max_proposals)  # warm-up (allocator, oneDNN kernels)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            model.propose(images[i : i + batch], max_proposals=max_proposals)
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="trained model folder (default: random init, default recipe)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=320, help="input side in pixels (the model resizes to its card)")
    parser.add_argument("--max-proposals", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ProposalNetwork.load(args.model) if args.model else ProposalNetwork(RpnTrainConfig().card()).eval()
    images = scenes(args.images, args.size)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {model.card.name} ({params / 1e6:.2f} M parameters, input {model.card.image_size} px), "
          f"{args.threads} threads, {args.images} scenes of {args.size} px, {args.max_proposals} proposals")
    print("| batch | images/s | ms/image |")
    print("|---:|---:|---:|")
    for batch in (1, 8):
        rate = images_per_second(model, images, batch, args.max_proposals)
        print(f"| {batch} | {rate:.1f} | {1000 / rate:.1f} |")


if __name__ == "__main__":
    main()
