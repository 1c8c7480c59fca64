"""``regionprompt demo``: what ``make demo`` runs.

At this stage of the project (no trained detector yet) the demo shows the benchmark world and the
yardstick end to end: it renders a small EmojiWorld ``test`` split, draws the ground truth of a few
scenes, and checks the evaluation on it -- the ground truth scored as predictions must give AP 1.0,
and the same boxes shifted by a few pixels must score lower.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo (what `make demo` runs)",
        description="Render a small EmojiWorld test set, draw its ground truth and evaluate it.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--images", type=int, default=24, help="test scenes to render (default 24)")
    parser.add_argument("--seed", type=int, default=1, help="world seed (default 1)")
    parser.set_defaults(func=run)


def _shifted(annotations: list[dict], pixels: float, rng: random.Random) -> list[dict]:
    """The ground truth as predictions, every box moved by ``pixels`` in a random diagonal direction."""
    out = []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        dx, dy = rng.choice((-1, 1)) * pixels, rng.choice((-1, 1)) * pixels
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": [x + dx, y + dy, w, h], "score": 1.0})
    return out


def run(args: argparse.Namespace) -> int:
    from regionprompt.draw import draw_boxes
    from regionprompt.eval import evaluate_detections
    from regionprompt.images import load_image
    from regionprompt.world.build import build_world

    out: Path = args.out
    world_dir = out / "emojiworld_test"
    summary = build_world(world_dir, split="test", num_images=args.images, seed=args.seed, overwrite=True)
    gt = json.loads((world_dir / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    splits = {c["id"]: c["split"] for c in gt["categories"]}

    print(f"EmojiWorld test split: {summary.images} scenes, {summary.annotations} boxes -> {world_dir}")
    print(f"{'image':22s} {'boxes':>5s}  objects (* = novel concept)")
    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in gt["images"][:4]:
        anns = by_image.get(image["id"], [])
        loaded = load_image(world_dir / "images" / image["file_name"])
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        labels = [names[a["category_id"]] for a in anns]
        drawn = draw_boxes(loaded.image, boxes, labels, label_ids=[a["category_id"] for a in anns])
        target = out / f"{Path(image['file_name']).stem}_ground_truth.png"
        drawn.save(target)
        shown = ", ".join(n + ("*" if splits[a["category_id"]] == "novel" else "") for n, a in zip(labels, anns))
        print(f"{image['file_name']:22s} {len(anns):5d}  {shown}")

    print("\nEvaluation check (COCO AP on this test set):")
    print(f"{'predictions':28s} {'AP':>6s} {'AP50':>6s} {'AP novel':>9s} {'AP base':>8s}")
    rng = random.Random(args.seed)
    for label, shift in (("ground truth", 0.0), ("ground truth shifted 2 px", 2.0), ("ground truth shifted 6 px", 6.0)):
        report = evaluate_detections(gt, _shifted(gt["annotations"], shift, rng))
        novel, base = report.split("novel"), report.split("base")
        print(f"{label:28s} {report.ap:6.3f} {report.ap50:6.3f} {novel.ap:9.3f} {base.ap:8.3f}")
    print(f"\nAnnotated images: {out}/*_ground_truth.png")
    return 0
