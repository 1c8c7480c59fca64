"""``regionprompt eval``: score COCO-format predictions against COCO ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from regionprompt.errors import EvaluationError
from regionprompt.eval import evaluate_detections


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate detections (COCO AP, base/novel AP, AP_r/AP_c/AP_f)",
        description=(
            "Evaluate COCO result dicts (image_id, category_id, bbox [x, y, w, h] in pixels, score) against "
            "COCO instances ground truth. Categories carrying 'split' (base/novel) and 'frequency' (r/c/f) "
            "add open-vocabulary and LVIS-style group metrics. Prints a markdown summary; with --out also "
            "writes DIR/eval.json and DIR/eval.md."
        ),
    )
    parser.add_argument("--gt", required=True, type=Path, help="ground truth: COCO instances JSON")
    parser.add_argument("--pred", required=True, type=Path, help="predictions: JSON list of COCO result dicts, or a scored COCO dataset (regionprompt label --format coco), matched by file and category name")
    parser.add_argument("--out", type=Path, help="directory for eval.json and eval.md (created if missing)")
    parser.add_argument(
        "--max-dets", type=int, default=100, help="detections kept per image (default 100; LVIS-like sets: 300)"
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="drop and count predictions with unknown image/category ids or bad boxes instead of failing",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = evaluate_detections(args.gt, args.pred, max_dets=args.max_dets, skip_invalid=args.skip_invalid)
    markdown = report.to_markdown()
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            report.to_json(args.out / "eval.json")
            (args.out / "eval.md").write_text(markdown, encoding="utf-8")
        except OSError as exc:
            raise EvaluationError(f"cannot write results to {args.out}: {exc}") from None
    print(markdown, end="")
    return 0
