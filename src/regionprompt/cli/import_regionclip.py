"""``regionprompt import-regionclip``: turn RegionCLIP's released checkpoints into a detector folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-regionclip",
        help="make a detector folder from RegionCLIP's released .pth files (CLIP backbone, concept embeddings, RPN)",
        description=(
            "Read a RegionCLIP checkpoint (regionclip_pretrained-*.pth, regionclip_finetuned-*.pth) with "
            "torch.load(weights_only=True), map its CLIP ResNet (backbone.*, or teacher_backbone.* with --teacher) "
            "onto RegionPrompt's image tower, its offline detectron2 RPN (offline_backbone.* + "
            "offline_proposal_generator.*, or an rpn_*.pth given with --rpn) onto a plain-PyTorch RPN, and its "
            "learned background (roi_heads.box_predictor.cls_bg_score; zero when absent, as RegionCLIP's zero-shot "
            "inference) into a detector folder OUT that `regionprompt detect --model OUT` and Detector.load(OUT) "
            "read. The text side is a fixed vocabulary: the rows of --embeddings (a concept-embedding file such "
            "as lvis_1203_cls_emb.pth) named by --names; without --embeddings, the checkpoint's CLIP text encoder "
            "(lang_encoder.*) when it has one, else its box predictor's class embeddings named by --names."
        ),
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT.pth", help="RegionCLIP checkpoint")
    parser.add_argument("--embeddings", type=Path, metavar="EMB.pth",
                        help="concept-embedding file: one (N, D) tensor, a row per class name")
    parser.add_argument("--names", type=Path, metavar="NAMES.txt|.json",
                        help="the N class names in row order: one per line, a JSON list of names, or of objects with "
                             "'name' (COCO/LVIS category lists, sorted by 'id')")
    parser.add_argument("--rpn", type=Path, metavar="RPN.pth",
                        help="detectron2 R50-FPN / R50-C4 RPN checkpoint (rpn_lvis_866.pth, rpn_coco_48.pth); "
                             "default: the offline_* RPN inside CHECKPOINT")
    parser.add_argument("--no-rpn", action="store_true",
                        help="no proposal network: the detector only classifies boxes given to it (API proposals=)")
    parser.add_argument("--teacher", action="store_true",
                        help="import the frozen CLIP teacher (teacher_backbone.*) instead of the student")
    parser.add_argument("--input-size", type=int, default=800, metavar="PX",
                        help="square side images are resized to for both networks (default 800: RegionCLIP's test size)")
    parser.add_argument("--max-proposals", type=int, default=300, help="proposals scored per image (default 300)")
    parser.add_argument("--rpn-nms", type=float, default=0.7, metavar="IOU",
                        help="NMS IoU of the RPN (default 0.7, detectron2's; RegionCLIP's LVIS zero-shot runs use 0.9)")
    parser.add_argument("--out", required=True, type=Path, help="detector folder to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from regionprompt.errors import RegionPromptError
    from regionprompt.interop.regionclip_release import import_regionclip_detector

    if args.rpn is not None and args.no_rpn:
        raise RegionPromptError("--rpn and --no-rpn exclude each other")
    out, parts = import_regionclip_detector(
        args.checkpoint, args.out, embeddings=args.embeddings, names=args.names, rpn=args.rpn,
        use_rpn=not args.no_rpn, teacher=args.teacher, input_size=args.input_size,
        max_proposals=args.max_proposals, rpn_overrides={"nms_thresh": args.rpn_nms},
    )
    card = parts.clip.card
    vision = card.vision
    print(f"image tower: {'teacher_backbone' if args.teacher else 'backbone'}.* -> ResNet layers {vision.layers} "
          f"width {vision.width}, embeddings {card.embed_dim}-d")
    vocabulary = getattr(parts.clip, "vocabulary", None)
    size = f"{len(vocabulary)} names" if vocabulary is not None else "open vocabulary (CLIP text encoder)"
    print(f"text: {size} from {parts.text_source}")
    background = "learned (cls_bg_score)" if bool(parts.background.abs().sum() > 0) else "zero (RegionCLIP zero-shot)"
    print(f"background: {background}")
    if parts.rpn is not None:
        rc = parts.rpn.card
        print(f"proposals: detectron2 R50-{rc.arch.upper()} RPN blocks {rc.blocks} from {parts.rpn_source}")
    else:
        print("proposals: none (give boxes to classify)")
    print(f"wrote {out}  (regionprompt detect IMAGE --model {out} --text NAME --out DIR)")
    return 0
