"""RegionCLIP zero-shot tables: several CLIP models (teacher, students, ablations) on one test build.

    python scripts/regionclip_tables.py --rpn weights/rpn --gt runs/world_test300_seed1 \\
        --model teacher=weights/teacher7-minilm --model student=runs/student/model \\
        --proposals gt rpn --max-images 300 --out runs/tables-regionclip

Each model is a CLIP model folder (teacher or student, made a zero-shot detector with ``--rpn``) or a
detector folder (e.g. ``train detector --arch regionclip``). Each row is ``regionprompt eval-detector
--mode text`` with the whole vocabulary: ``--proposals gt`` classifies the ground-truth boxes
(RegionCLIP's zero-shot region classification), ``rpn`` detects with proposals (score =
sqrt(p_class * objectness), per-class NMS). Reports go to ``OUT/NAME/{gt,rpn}`` (resumable); the
script prints one markdown table of AP50 all / base / novel and AP.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from regionprompt.api import Detector
from regionprompt.data.files import atomic_write_text, dump_json
from regionprompt.detect.regionclip.zeroshot import ZeroShotConfig
from regionprompt.eval.detector_eval import evaluate_detector
from regionprompt.eval.detector_eval_config import DetectorEvalConfig
from regionprompt.eval.report import percent


def load_model(path: Path, rpn_dir: Path | None, input_size: int, max_proposals: int) -> Detector:
    """A detector folder as it is, or a CLIP model folder + the RPN as a zero-shot detector."""
    if (path / "detector.json").exists():
        return Detector.load(path)
    from regionprompt.detect.rpn import ProposalNetwork
    from regionprompt.vl.clip_model import RegionPromptCLIP

    rpn = ProposalNetwork.load(rpn_dir).eval() if rpn_dir else None
    config = ZeroShotConfig(input_size=input_size, max_proposals=max_proposals)
    return Detector.from_models(RegionPromptCLIP.load(path), rpn, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a CLIP model folder or a detector folder, named (repeat)")
    parser.add_argument("--rpn", type=Path, help="proposal network folder for CLIP model folders")
    parser.add_argument("--gt", required=True, type=Path, help="test build (folder or annotations.json)")
    parser.add_argument("--proposals", nargs="+", default=["gt", "rpn"], choices=["gt", "rpn"])
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--rpn-max-images", type=int, default=None,
                        help="images of the (slower) rpn rows (default: --max-images)")
    parser.add_argument("--input-size", type=int, default=224, help="image side the CLIP models see (default 224)")
    parser.add_argument("--max-proposals", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    models = []
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--model takes NAME=DIR, got {item!r}")
        models.append((name, Path(path)))
    lines = ["| model | boxes | images | AP50 all | AP50 base | AP50 novel | AP | s / image |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, path in models:
        detector = load_model(path, args.rpn, args.input_size, args.max_proposals)
        for proposals in args.proposals:
            folder = args.out / name / proposals
            folder.mkdir(parents=True, exist_ok=True)
            images = args.rpn_max_images if proposals == "rpn" and args.rpn_max_images else args.max_images
            config = DetectorEvalConfig(mode="text", proposals=proposals, max_images=images)
            began = time.perf_counter()
            result = evaluate_detector(detector, args.gt, config, log_path=folder / "progress.jsonl")
            seconds = time.perf_counter() - began
            atomic_write_text(folder / "report.json", dump_json(result.to_dict(), indent=2))
            atomic_write_text(folder / "report.md", result.to_markdown())
            s = result.summary()
            count = result.counts.get("images") or 1
            lines.append(f"| {name} | {proposals} | {count} | {percent(s.get('AP50'))} | {percent(s.get('AP50_base'))} | "
                         f"{percent(s.get('AP50_novel'))} | {percent(s.get('AP'))} | {seconds / count:.2f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "table.md", f"{args.gt}, text prompts, whole vocabulary\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
