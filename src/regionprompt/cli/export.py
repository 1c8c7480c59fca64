"""``regionprompt export``: a T-Rex2 detector folder -> an ONNX export folder (onnxruntime) that keeps prompts changeable."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a T-Rex2 detector to ONNX with prompt embeddings as a graph input (onnxruntime)",
        description=(
            "Write MODEL's image side (backbone + encoder), its prompt-conditioned decoder (prompt embeddings are "
            "a graph input: any text, exemplar or concept works after the export) and its region namer's tower "
            "as ONNX graphs, beside a byte-for-byte copy of the detector folder (the prompt side, run in torch). "
            "Detector.load(OUT) and --model OUT then run the graphs with onnxruntime. Both runtimes are compared "
            "on rendered EmojiWorld scenes before the folder is kept; the differences go into OUT/onnx/export.json. "
            "Needs the onnx extra: pip install 'regionprompt[onnx]'."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="'default' (the shipped model) or a T-Rex2 detector folder")
    parser.add_argument("--format", dest="fmt", default="onnx", metavar="FORMAT", help="export format (only 'onnx')")
    parser.add_argument("--out", required=True, type=Path, help="new folder to write (must not exist, or be empty)")
    parser.add_argument("--int8", action="store_true",
                        help="quantise the matrix products' weights to int8 (dynamic quantisation; scores move, "
                             "see export.json's parity)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 16; default 18)")
    parser.add_argument("--check-scenes", type=int, default=4, metavar="N",
                        help="EmojiWorld scenes on which onnxruntime is compared with torch before the folder is kept "
                             "(default 4; 0 skips the check)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from regionprompt.errors import RegionPromptError
    from regionprompt.export import export_detector

    if args.check_scenes < 0:
        raise RegionPromptError(f"--check-scenes must be >= 0, got {args.check_scenes}")
    result = export_detector(args.model, args.out, fmt=args.fmt, int8=args.int8, opset=args.opset,
                             parity_scenes=args.check_scenes)
    for name, file in result.export.graphs.items():
        print(f"{name:>15}: {result.folder / 'onnx' / file} ({result.sizes[name] / 1e6:.1f} MB)")
    parity = result.export.parity
    if not parity:
        print("onnxruntime vs torch: not checked (--check-scenes 0)")
    else:
        print(f"onnxruntime vs torch on {parity['scenes']} EmojiWorld scenes: max score difference "
              f"{parity['max_score_diff']:.2g}, max box difference {parity['max_box_diff_px']:.2g} px, "
              f"same detections: {'yes' if parity['same_detections'] else 'no'}")
    print(f"wrote {result.folder}: Detector.load({str(result.folder)!r}) or --model {result.folder}")
    return 0
