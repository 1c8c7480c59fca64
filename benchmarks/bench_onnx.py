"""ONNX export of a T-Rex2 detector: onnxruntime vs torch speed (1 and 2 threads) and what int8 costs.

Usage::

    python benchmarks/bench_onnx.py [--model default] [--images 8] [--scenes 20] [--threads 1 2] [--keep DIR]

Exports ``--model`` twice (float32 and ``--int8``; the export time is reported), then, in one process:

* **speed**: ``Detector.predict`` per image on EmojiWorld test scenes at the model's input size, each
  searched for its objects' names plus five absent ones (text prompts from the warmed embedding cache,
  threshold 0.2, the namer included), and the image side alone (``encode_images``); torch, onnxruntime
  float32 and int8 in interleaved rounds, median seconds per image, for each thread count;
* **accuracy**: over ``--scenes`` scenes, the largest difference of T-Rex2's query scores against torch
  and AP50 of the text detections (names present + five absent per scene; faster-coco-eval) per runtime.

Needs the onnx extra (``pip install 'regionprompt[onnx]'``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from regionprompt.api import Detector
from regionprompt.eval.coco_eval import evaluate_detections
from regionprompt.export import export_detector, measure_parity
from regionprompt.images import load_image
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig

ABSENT = 5  # absent names searched for per scene, beside the present ones (as the demo does)


def scenes_and_prompts(size: int, count: int, seed: int = 1) -> list[tuple[object, list[str], list[tuple]]]:
    """``count`` EmojiWorld test scenes: (image, phrases, [(phrase index, xyxy box)])."""
    renderer = SceneRenderer.default(SceneConfig(size=size))
    names = {c.id: c.name for c in renderer.concepts}
    pool = [c.name for c in renderer.concepts]
    out = []
    for index in range(count):
        scene = renderer.render("test", index, seed)
        present = list(dict.fromkeys(names[o.concept_id] for o in scene.labelled_objects))
        absent = [n for n in pool[(index * 37) % len(pool) :: 53] if n not in present][:ABSENT]
        phrases = present + absent
        truth = [(phrases.index(names[o.concept_id]), o.box_xyxy) for o in scene.labelled_objects]
        out.append((scene.image, phrases, truth))
    return out


def ap50(detector: Detector, scenes: list) -> float:
    """AP50 (%) of text detections on ``scenes``; categories are (scene, phrase) pairs made global by name."""
    vocabulary = sorted({p for _, phrases, _ in scenes for p in phrases})
    ids = {name: i + 1 for i, name in enumerate(vocabulary)}
    images, annotations, predictions = [], [], []
    for image_id, (image, phrases, truth) in enumerate(scenes, start=1):
        images.append({"id": image_id, "width": image.width, "height": image.height, "file_name": f"{image_id}.png"})
        for label, (x0, y0, x1, y1) in truth:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[phrases[label]],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        [dets] = detector.predict(image, text=phrases, threshold=0.05)
        predictions.extend(dets.to_coco(image_id, ids))
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": n} for n, i in ids.items()]}
    return 100.0 * float(evaluate_detections(gt, predictions).ap50 or 0.0)


def seconds_per_image(call, items: list) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        call(item)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=8, help="images timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=20, help="scenes of the accuracy rows")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, help="write the exports here (default: a temporary folder)")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    exports = {}
    for name, int8 in (("onnxruntime float32", False), ("onnxruntime int8", True)):
        folder = root / ("int8" if int8 else "float32")
        start = time.perf_counter()
        if folder.exists():
            print(f"{name}: reusing {folder}")
        else:
            export_detector(args.model, folder, int8=int8, parity_scenes=0)
            print(f"{name}: exported in {time.perf_counter() - start:.0f} s -> {folder}")
        exports[name] = folder

    reference = Detector.load(args.model)
    size = reference.engine.model.card.image_size
    timed = scenes_and_prompts(size, args.images)
    pixels = [reference.engine._pixels([load_image(image)]) for image, _, _ in timed]  # resized input, both runtimes

    print(f"\nspeed: {args.model}, {size} px EmojiWorld scenes, text = names present + {ABSENT} absent, "
          f"median s/image over {args.rounds} rounds x {args.images} images")
    print("| threads | runtime | predict s/image | ratio | image side s/image | ratio |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        detectors = {"torch": Detector.load(args.model)}
        detectors.update({name: Detector.load(folder, threads=threads) for name, folder in exports.items()})
        times: dict[str, list[float]] = {n: [] for n in detectors}
        side: dict[str, list[float]] = {n: [] for n in detectors}
        for detector in detectors.values():  # warm-up: allocators, kernels, the embedding cache
            detector.predict(timed[0][0], text=timed[0][1], threshold=0.2)
        for _ in range(args.rounds):  # interleaved, so load on the machine hits every runtime alike
            for name, detector in detectors.items():
                times[name] += seconds_per_image(lambda s: detector.predict(s[0], text=s[1], threshold=0.2), timed)
                side[name] += seconds_per_image(detector.engine.model.encode_images, pixels)
        base, base_side = statistics.median(times["torch"]), statistics.median(side["torch"])
        for name in detectors:
            t, s = statistics.median(times[name]), statistics.median(side[name])
            print(f"| {threads} | {name} | {t:.4f} | {t / base:.2f} | {s:.4f} | {s / base_side:.2f} |")

    torch.set_num_threads(max(args.threads))
    scenes = scenes_and_prompts(size, args.scenes, seed=2)
    print(f"\naccuracy: {args.scenes} EmojiWorld test scenes (seed 2), text = names present + {ABSENT} absent")
    print("| runtime | max query score difference vs torch | text AP50 (%) |")
    print("|---|---|---|")
    print(f"| torch | 0 | {ap50(reference, scenes):.1f} |")
    for name, folder in exports.items():
        exported = Detector.load(folder)
        parity = measure_parity(reference, exported, scenes=min(args.scenes, 8))
        print(f"| {name} | {parity['max_score_diff']:.2g} | {ap50(exported, scenes):.1f} |")


if __name__ == "__main__":
    main()
