"""Detector speed: images per second of ``Detector.predict`` with 10 and 1,177 text prompts and with one
box prompt, batch 1; several ``--model`` s are timed in one run and compared (ratio to the first).

Usage::

    python benchmarks/bench_detector.py [--model runs/detector-t5 --model runs/trex2-t5/model] [--threads 1] \
        [--images 4] [--size 320]

Without ``--model`` a randomly initialised detector is timed (RN-tiny CLIP + a proposal network of the
default RPN recipe; speed depends on the weights only through how many proposals survive the RPN's NMS,
so a trained model is the honest measure). Inputs are EmojiWorld test scenes of ``--size`` px, one per
``predict`` call, threshold 0 (every proposal x prompt pair is a candidate, as in evaluation). Two ways
to pass the prompts:

* ``text=[...]``: phrases on every call, as a user does (a vocabulary over ``MAX_PROMPTS`` per call is
  timed with concepts only); their embeddings come from the embedding
  cache (warmed before timing), so the row measures the lookup, not the text encoder;
* ``concepts=[...]``: embedded once with ``make_concepts``, as ``regionprompt eval-detector`` does.

Each row times ``--images`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from regionprompt.api import Detector
from regionprompt.prompts import MAX_PROMPTS
from regionprompt.detect.regionclip import ZeroShotConfig
from regionprompt.detect.rpn import ProposalNetwork
from regionprompt.train.rpn import RpnTrainConfig
from regionprompt.vl.clip_model import build_clip
from regionprompt.vl.embeddings import EmbeddingCache
from regionprompt.world.concepts import load_concepts
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig


def images_per_second(detector: Detector, images: list, **prompts: object) -> float:
    detector.predict(images[0], threshold=0.0, **prompts)  # warm-up: allocator, kernels, embedding cache
    start = time.perf_counter()
    for image in images:
        detector.predict(image, threshold=0.0, **prompts)
    return len(images) / (time.perf_counter() - start)


def describe(detector: Detector) -> str:
    if detector.kind == "trex2":
        card = detector.engine.model.card
        return f"T-Rex2 {card.name} ({card.clip.name} backbone, input {card.image_size} px, {card.num_queries} queries)"
    cfg = detector.config
    return (f"RegionCLIP zero-shot (CLIP {detector.engine.model.card.name}, input {detector.engine.regions.input_size} px, "
            f"up to {cfg.max_proposals} proposals, background {cfg.background})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="detector folder; repeat to compare (default: random RN-tiny + default RPN)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=4, help="timed predict calls per row")
    parser.add_argument("--size", type=int, default=320, help="scene side in pixels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    renderer = SceneRenderer.default(SceneConfig(size=args.size))
    scenes = [renderer.render("test", i, seed=1) for i in range(args.images)]
    images = [scene.image for scene in scenes]
    vocabulary = [c.name for c in load_concepts()]
    print(f"{args.threads} threads, {args.images} EmojiWorld test scenes of {args.size} px, batch 1, threshold 0")
    rows: list[tuple[str, str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings.sqlite")
        detectors = []
        for folder in args.model or [None]:
            if folder:
                detectors.append(Detector.load(folder, cache=cache))
            else:
                rpn = ProposalNetwork(RpnTrainConfig().card()).eval()
                detectors.append(Detector.from_models(build_clip("RN-tiny"), rpn, ZeroShotConfig(), cache=cache))
        for index, detector in enumerate(detectors):
            name = f"#{index + 1}"
            print(f"{name}: {detector.source}: {describe(detector)}")
            for count in (10, len(vocabulary)):
                names = vocabulary[:count]
                concepts = detector.make_concepts(text=names, max_prompts=None)
                ways = [("concepts", {"concepts": concepts})]
                if count <= MAX_PROMPTS:  # more phrases per predict call are refused: a vocabulary is saved concepts
                    ways.insert(0, ("text", {"text": names}))
                for label, prompts in ways:
                    rows.append((name, f"{count} phrases", label, images_per_second(detector, images, **prompts)))
            # One box on the first object of the first scene, searched for on every scene (generic workflow).
            box = list(scenes[0].labelled_objects[0].box_xyxy)
            concept = detector.make_concept("exemplar", boxes=[box], prompt_images=images[0])
            rows.append((name, "1 box (concept)", "concepts", images_per_second(detector, images, concepts=[concept])))
    base = {(what, how): rate for model, what, how, rate in rows if model == "#1"}
    print("| model | prompts | passed as | images/s | s/image | speed vs #1 |")
    print("|---|---:|---|---:|---:|---:|")
    for model, what, how, rate in rows:
        print(f"| {model} | {what} | {how} | {rate:.2f} | {1 / rate:.2f} | {rate / base[(what, how)]:.2f}x |")


if __name__ == "__main__":
    main()
