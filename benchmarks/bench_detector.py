"""Detector speed: images per second of ``Detector.predict`` with 10 and 1,177 text prompts, batch 1.

Usage::

    python benchmarks/bench_detector.py [--model runs/detector-t4] [--threads 1] [--images 4] [--size 320]

Without ``--model`` a randomly initialised detector is timed (RN-tiny CLIP + a proposal network of the
default RPN recipe; speed depends on the weights only through how many proposals survive the RPN's NMS,
so a trained model is the honest measure). Inputs are EmojiWorld test scenes of ``--size`` px, one per
``predict`` call, threshold 0 (every proposal x prompt pair is a candidate, as in evaluation). Two ways
to pass the prompts:

* ``text=[...]``: phrases on every call, as a user does; their embeddings come from the embedding
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="detector folder (default: random RN-tiny + default RPN)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=4, help="timed predict calls per row")
    parser.add_argument("--size", type=int, default=320, help="scene side in pixels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings.sqlite")
        if args.model:
            detector = Detector.load(args.model, cache=cache)
        else:
            rpn = ProposalNetwork(RpnTrainConfig().card()).eval()
            detector = Detector.from_models(build_clip("RN-tiny"), rpn, ZeroShotConfig(), cache=cache)
        renderer = SceneRenderer.default(SceneConfig(size=args.size))
        images = [renderer.render("test", i, seed=1).image for i in range(args.images)]
        vocabulary = [c.name for c in load_concepts()]
        cfg = detector.config
        print(f"model {detector.source} (CLIP {detector.engine.model.card.name}, input {detector.engine.regions.input_size} px), "
              f"{args.threads} threads, {args.images} scenes of {args.size} px, batch 1, up to {cfg.max_proposals} "
              f"proposals, background {cfg.background}, threshold 0")
        print("| prompts | passed as | images/s | s/image |")
        print("|---:|---|---:|---:|")
        for count in (10, len(vocabulary)):
            names = vocabulary[:count]
            concepts = detector.make_concepts(text=names)
            for label, prompts in (("text", {"text": names}), ("concepts", {"concepts": concepts})):
                rate = images_per_second(detector, images, **prompts)
                print(f"| {count} | {label} | {rate:.2f} | {1 / rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
