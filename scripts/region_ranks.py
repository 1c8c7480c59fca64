"""Per-object zero-shot recognition of CLIP models: the rank of each ground-truth box's true name.

    python scripts/region_ranks.py --gt runs/world_test1000_seed2 \\
        --model teacher7=weights/teacher7-minilm --model student=runs/student-t7cap/model

For every ground-truth box of the build, the model's region embedding (RoIAlign on the whole image at
``--input-size``, as the zero-shot detector computes it) is compared by cosine with every category
name's text embedding (template ensemble); the rank of the true name (1 = best) is collected per split
of the category. Prints top-1 / top-5 / top-20 accuracy and the median rank for base and novel objects.
Unlike per-category AP, which averages over many categories with one or two test objects each, these
are averages over objects, so small differences between models are measurable.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regionprompt.eval.eval_set import load_eval_set
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.regionclip.region_encoder import embed_concepts, encode_regions


def true_name_ranks(model_dir: Path, gt: Path, input_size: int, max_images: int | None) -> dict[str, np.ndarray]:
    """``{split: (N,) int ranks}`` of the true category name for each ground-truth box of ``gt``."""
    data = load_eval_set(gt, max_images=max_images)
    category_ids = sorted(data.names)
    column = {c: i for i, c in enumerate(category_ids)}
    model = load_checkpoint(model_dir).eval()
    text = embed_concepts(model, [data.names[c] for c in category_ids], "emoji")  # (C, D)
    ranks: dict[str, list[int]] = defaultdict(list)
    for image in data.images:
        if not image.category_ids:
            continue
        with Image.open(image.path) as opened:
            rgb = opened.convert("RGB")
        pixels = np.array(rgb.resize((input_size, input_size), Image.BILINEAR))
        batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255.0)
        width, height = image.wh
        scale = torch.tensor([input_size / width, input_size / height] * 2)
        with torch.no_grad():
            scores = encode_regions(model, batch, [image.boxes * scale]) @ text.t()  # (G, C)
        for category, row in zip(image.category_ids, scores):
            ranks[data.splits.get(category, "all")].append(int((row > row[column[category]]).sum()) + 1)
    return {name: np.asarray(values) for name, values in ranks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="CLIP model folder (repeat)")
    parser.add_argument("--gt", required=True, type=Path, help="EmojiWorld build (folder or annotations.json)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | objects | boxes | top-1 | top-5 | top-20 | median rank |\n|---|---|---:|---:|---:|---:|---:|")
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--model takes NAME=DIR, got {item!r}")
        for split, r in sorted(true_name_ranks(Path(path), args.gt, args.input_size, args.max_images).items()):
            print(f"| {name} | {split} | {len(r)} | {np.mean(r == 1):.3f} | {np.mean(r <= 5):.3f} | "
                  f"{np.mean(r <= 20):.3f} | {np.median(r):.0f} |", flush=True)


if __name__ == "__main__":
    main()
