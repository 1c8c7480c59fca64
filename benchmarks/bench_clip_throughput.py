"""Training throughput of CLIP model cards on this machine: forward + backward + AdamW step.

Prints a table of images/s at a given batch size (default 64) for each card, random images and
EmojiWorld-like short captions. Used to choose the card for the <= 45 min CPU pretraining.

    python benchmarks/bench_clip_throughput.py --cards RN-tiny ViT-tiny --batch 64 --steps 4
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from regionprompt.vl.clip_model import build_clip
from regionprompt.vl.cards import load_card

CAPTIONS = ["a red apple next to a small dog", "two cats and a pizza on grass", "a rocket above a tree"]


def train_flops_per_image(model, images: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """Forward + backward GFLOP per image of the image tower and per caption of the text tower."""
    with FlopCounterMode(display=False) as counter:
        model.encode_image(images[:2]).sum().backward()
    image = counter.get_total_flops() / 2 / 1e9
    with FlopCounterMode(display=False) as counter:
        model.encode_tokens(tokens[:2]).sum().backward()
    model.zero_grad(set_to_none=True)
    return image, counter.get_total_flops() / 2 / 1e9


def measure(card_name: str, batch: int, steps: int, image_size: int | None) -> dict[str, float]:
    card = load_card(card_name)
    model = build_clip(card).train()
    size = image_size or card.vision.image_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size)
    tokens = model.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
    labels = torch.arange(batch)
    image_gflop, text_gflop = train_flops_per_image(model, images, tokens)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        img, txt, scale = model(images, tokens)
        logits = scale * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model.encode_image(images)
        infer = batch / (time.perf_counter() - start)
    return {
        "params": sum(p.numel() for p in model.visual.parameters()) / 1e6,
        "image_gflop": image_gflop,
        "text_gflop": text_gflop,
        "train": batch / (sum(times) / len(times)),
        "infer": infer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", nargs="+", default=["RN-tiny", "ViT-tiny"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=None, help="override the card's resolution")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads={args.threads} batch={args.batch} steps={args.steps}")
    print(
        f"{'card':<10} {'px':>4} {'visual M':>9} {'img GFLOP':>10} {'txt GFLOP':>10} "
        f"{'train img/s':>12} {'infer img/s':>12} {'45 min imgs':>12}"
    )
    for name in args.cards:
        r = measure(name, args.batch, args.steps, args.image_size)
        size = args.image_size or load_card(name).vision.image_size
        print(
            f"{name:<10} {size:>4} {r['params']:>9.1f} {r['image_gflop']:>10.2f} {r['text_gflop']:>10.3f} "
            f"{r['train']:>12.1f} {r['infer']:>12.1f} {r['train'] * 2700:>12.0f}"
        )
    print("GFLOP: forward + backward per image / per caption. Train: full step incl. text tower and AdamW.")


if __name__ == "__main__":
    main()
