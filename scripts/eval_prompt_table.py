"""Every prompt workflow of one detector on one test build: the T-Rex2 issue's evaluation table.

    python scripts/eval_prompt_table.py --model runs/trex2-t5/model --gt runs/world_test300_seed1 \\
        --exemplars runs/world_val400_seed2 --max-images 100 --out runs/table-trex2

Rows: text prompts (the whole vocabulary), interactive box prompts (1 and 3 ground-truth boxes per
category), generic box prompts from K = 1 and 5 other images, mixed (K = 5 exemplars + the name).
Each row is ``regionprompt eval-detector`` with those settings (report.json / report.md per row under
``--out``, resumable); the script prints one markdown table of AP / AP50 for all, base and novel and
AP_r, plus seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from regionprompt.api import Detector
from regionprompt.data.files import atomic_write_text, dump_json
from regionprompt.eval.detector_eval import evaluate_detector
from regionprompt.eval.detector_eval_config import DetectorEvalConfig
from regionprompt.eval.report import percent

ROWS = {
    "text": dict(mode="text"),
    "interactive, 1 box": dict(mode="visual-interactive", prompt_boxes=1),
    "interactive, 3 boxes": dict(mode="visual-interactive", prompt_boxes=3),
    "generic, K = 1": dict(mode="visual-generic", exemplar_images=1),
    "generic, K = 5": dict(mode="visual-generic", exemplar_images=5),
    "mixed, K = 5 + name": dict(mode="mixed", exemplar_images=5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="detector folder (or 'default')")
    parser.add_argument("--gt", required=True, type=Path, help="test build (folder or annotations.json)")
    parser.add_argument("--exemplars", required=True, type=Path, help="a separate build giving exemplar boxes")
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    detector = Detector.load(args.model)
    lines = ["| prompts | AP | AP50 | AP50 base | AP50 novel | AP_r | s / image |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in args.rows:
        folder = args.out / row.replace(",", "").replace(" ", "_").replace("=", "").replace("+", "plus")
        folder.mkdir(parents=True, exist_ok=True)
        config = DetectorEvalConfig(max_images=args.max_images, **ROWS[row])
        began = time.perf_counter()
        result = evaluate_detector(detector, args.gt, config, exemplars=args.exemplars,
                                   log_path=folder / "progress.jsonl")
        seconds = time.perf_counter() - began
        atomic_write_text(folder / "report.json", dump_json(result.to_dict(), indent=2))
        atomic_write_text(folder / "report.md", result.to_markdown())
        s = result.summary()
        images = result.counts.get("images") or 1
        lines.append(f"| {row} | {percent(s.get('AP'))} | {percent(s.get('AP50'))} | {percent(s.get('AP50_base'))} | "
                     f"{percent(s.get('AP50_novel'))} | {percent(s.get('AP_r'))} | {seconds / images:.2f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "table.md", f"Model `{args.model}` ({detector.kind}), {args.gt}, "
                      f"{args.max_images} images, exemplars from {args.exemplars}\n\n" + table)
    print(table)
    print(json.dumps({"model_hash": detector.model_hash, "kind": detector.kind}))


if __name__ == "__main__":
    main()
