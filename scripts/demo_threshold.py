"""Choose a detector's drawn score threshold on val with the protocol `make demo` reports.

    python scripts/demo_threshold.py --model default --gt runs/world_val100_seed5 --max-images 40

Each scene is searched with text prompts naming the concepts present in it (the demo's text column);
at every threshold it counts the objects found (a detection of their name at IoU >= 0.5) and the
detections that are right, and prints recall, precision and F1. Run it on a ``val`` build: the demo's
own scenes are test scenes, so a threshold chosen on them would be tuned on the test split.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from regionprompt.api import Detector
from regionprompt.cli.demo import GroundTruth, correct_detections, found_instances
from regionprompt.eval.eval_set import load_eval_set

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="detector folder or 'default'")
    parser.add_argument("--gt", type=Path, required=True, help="EmojiWorld val build (folder or annotations.json)")
    parser.add_argument("--max-images", type=int, default=40)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model)
    data = load_eval_set(args.gt, max_images=args.max_images)
    by_image = defaultdict(list)
    for a in data.gt["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append(GroundTruth(data.names[a["category_id"]], a["category_id"],
                                                   data.splits.get(a["category_id"], "base"), (x, y, x + w, y + h)))
    counts = {t: [0, 0, 0, 0] for t in args.thresholds}  # found, objects, right, drawn
    for image in data.images:
        objects = by_image[image.id]
        present = sorted({o.name for o in objects})
        if not present:
            continue
        [dets] = detector.predict(str(image.path), text=present, threshold=min(args.thresholds))
        for t in args.thresholds:
            counts[t][0] += sum(found_instances(dets, objects, name, t)[0] for name in present)
            counts[t][1] += len(objects)
            right, drawn = correct_detections(dets, objects, t)
            counts[t][2] += right
            counts[t][3] += drawn
    print(f"{args.model} on {len(data.images)} scenes of {args.gt}\n")
    print("| threshold | objects found | detections right | F1 |\n|---:|---:|---:|---:|")
    for t, (found, objects, right, drawn) in counts.items():
        recall, precision = found / max(objects, 1), right / max(drawn, 1)
        f1 = 2 * recall * precision / max(recall + precision, 1e-9)
        print(f"| {t:.2f} | {found} / {objects} ({100 * recall:.0f} %) | {right} / {drawn} ({100 * precision:.0f} %) | {f1:.3f} |")


if __name__ == "__main__":
    main()
