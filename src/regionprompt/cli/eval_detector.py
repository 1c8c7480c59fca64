"""``regionprompt eval-detector``: AP of a detector folder with text, visual and negative prompts."""

from __future__ import annotations

import argparse
from pathlib import Path

MODE_HELP = {
    "text": "search every image for the whole vocabulary (every category name) with text prompts",
    "visual-generic": "one concept per category from exemplar boxes on up to K images of --exemplars",
    "mixed": "as visual-generic, with each category's name added to its exemplars (text + visual prompts)",
    "visual-interactive": "per image and category present, ground-truth box(es) of that image as the prompt",
    "negatives": "look-alike pairs: false positives on the look-alike and AP, without vs with negative prompts",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from regionprompt.eval.detector_eval_config import (
        MODE_BACKGROUND,
        DetectorEvalConfig,
    )

    d = DetectorEvalConfig()
    parser = subparsers.add_parser(
        "eval-detector",
        help="evaluate a detector: text / visual-generic / visual-interactive / mixed prompts, negatives on look-alikes",
        description="Run a detector folder (RegionCLIP: detector.json + clip/ + rpn/; T-Rex2: detector.json + trex2/, "
        "or a bare T-Rex2 model folder) on a COCO build whose categories carry "
        "'split' and 'frequency' (e.g. `regionprompt world build --split test --images 300 --seed 1 --out DIR`) "
        "and report COCO AP / AP50 for all, base and novel categories and AP_r / AP_c / AP_f. Modes: "
        + "; ".join(f"{k}: {v}" for k, v in MODE_HELP.items())
        + ". Prints a markdown report; --out DIR writes report.json, report.md and predictions.json, and keeps "
        "progress.jsonl so that an interrupted run resumes.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="detector folder (or 'default')")
    parser.add_argument("--gt", required=True, type=Path, metavar="JSON|DIR",
                        help="ground truth: COCO JSON or a build folder with annotations.json")
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="folder of the ground truth's images (default: beside the JSON or in its images/)")
    parser.add_argument("--mode", choices=list(MODE_HELP), default=d.mode, help=f"protocol (default {d.mode})")
    parser.add_argument("--proposals", choices=["rpn", "gt"], default=d.proposals,
                        help="rpn: the detector's proposal network (T-Rex2: its own queries); gt: classify the ground-truth "
                             f"boxes (RegionCLIP only: recognition, RegionCLIP's benchmark) (default {d.proposals})")
    defaults = ", ".join(f"{m}: {b}" for m, b in MODE_BACKGROUND.items())
    parser.add_argument("--background", choices=["none", "auto", "text", "learned"], default=None,
                        help=f"background class (default per mode: {defaults}, or 'learned' for a detector that learned one; "
                             "none = RegionCLIP's zero-shot protocol)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate the first N images")
    parser.add_argument("--max-detections", type=int, default=d.max_detections, metavar="N",
                        help=f"detections per image after NMS, and COCO maxDets (default {d.max_detections})")
    parser.add_argument("--threshold", type=float, default=d.threshold,
                        help=f"minimum detection score (default {d.threshold:g})")
    parser.add_argument("--exemplars", type=Path, default=None, metavar="JSON|DIR",
                        help="a SEPARATE build giving exemplar boxes (visual-generic, mixed, --negative-kind visual), "
                             "e.g. `world build --split val --seed 2`")
    parser.add_argument("--exemplar-images", type=int, default=d.exemplar_images, metavar="K",
                        help=f"visual-generic, mixed: one exemplar from each of up to K images (default {d.exemplar_images})")
    parser.add_argument("--prompt-boxes", type=int, default=d.prompt_boxes, metavar="N",
                        help=f"visual-interactive: ground-truth boxes per prompt (default {d.prompt_boxes})")
    parser.add_argument("--pairs", type=int, default=d.pairs, metavar="N",
                        help=f"negatives: most similar category pairs, each run both ways (default {d.pairs})")
    parser.add_argument("--negative-kind", choices=["text", "visual"], default=d.negative_kind,
                        help=f"negatives: phrase vs phrase, or exemplars vs exemplars (default {d.negative_kind})")
    parser.add_argument("--fp-threshold", type=float, default=d.fp_threshold,
                        help=f"negatives: score from which detections are counted (default {d.fp_threshold})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per call (default {d.batch_size})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"choice of exemplar / prompt boxes (default {d.seed})")
    parser.add_argument("--cache", default="default", metavar="FILE",
                        help="text-embedding cache file, or 'none' (default: ~/.cache/regionprompt/embeddings.sqlite)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write report.json, report.md, predictions.json and progress.jsonl here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.api import Detector
    from regionprompt.data.files import atomic_write_text, dump_json
    from regionprompt.errors import EvaluationError
    from regionprompt.eval.detector_eval import DetectorEvalConfig, evaluate_detector

    if args.threads < 1:
        raise EvaluationError(f"--threads must be >= 1, got {args.threads}")
    config = DetectorEvalConfig(
        mode=args.mode, proposals=args.proposals, background=args.background, max_images=args.max_images,
        max_detections=args.max_detections, threshold=args.threshold, exemplar_images=args.exemplar_images,
        prompt_boxes=args.prompt_boxes, pairs=args.pairs, negative_kind=args.negative_kind,
        fp_threshold=args.fp_threshold, batch_size=args.batch_size, seed=args.seed,
    )
    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model, cache=None if args.cache == "none" else args.cache)
    log_path = None
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EvaluationError(f"cannot create {args.out}: {exc}") from None
        log_path = args.out / "progress.jsonl"
    result = evaluate_detector(detector, args.gt, config, exemplars=args.exemplars, image_root=args.images,
                               log_path=log_path)
    markdown = result.to_markdown()
    if args.out is not None:
        try:
            atomic_write_text(args.out / "report.json", dump_json(result.to_dict(), indent=2))
            atomic_write_text(args.out / "report.md", markdown)
            if result.report is not None:
                atomic_write_text(args.out / "predictions.json", dump_json(list(result.predictions)))
        except OSError as exc:
            raise EvaluationError(f"cannot write the report to {args.out}: {exc}") from None
    print(markdown, end="")
    return 0
