"""``regionprompt eval-teacher``: zero-shot numbers of a CLIP teacher on EmojiWorld."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-teacher",
        help="zero-shot retrieval, multi-label and GT-box region classification of a CLIP model",
        description="Measure a CLIP model (a folder with model.safetensors + card.json, or any checkpoint "
        "load_checkpoint reads) on EmojiWorld: image->caption recall@1/5 and multi-label concept mAP on held-out "
        "val scenes, and region classification of ground-truth boxes (crop vs RoIAlign) on a test build, "
        "as AP50 for base / novel / all.",
    )
    parser.add_argument("--model", type=Path, required=True, help="model folder or checkpoint file")
    parser.add_argument("--test", type=Path, required=True, help="EmojiWorld test build (its annotations.json)")
    parser.add_argument("--val-cache", type=Path, required=True, help="folder for the held-out val scene cache")
    parser.add_argument("--val-images", type=int, default=500, help="val scenes for retrieval / multi-label (default 500)")
    parser.add_argument("--templates", default="emoji", help="prompt template set (emoji, single, regionclip81)")
    parser.add_argument("--input-size", type=int, default=None, help="input resolution (default: the card's)")
    parser.add_argument("--pretrain-cache", type=Path, default=None,
                        help="the teacher's pretraining scene cache: its captions define held-out synonyms")
    parser.add_argument("--lvis", type=Path, default=None,
                        help="LVIS category info JSON (lvis_v1_train_cat_info.json): more held-out synonyms")
    parser.add_argument("--out", type=Path, default=None, help="write teacher_eval.json and teacher_eval.md here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from regionprompt.eval.zero_shot import evaluate_teacher, teacher_markdown
    from regionprompt.interop.checkpoints import load_checkpoint

    model = load_checkpoint(args.model)
    pretrain_captions = None
    if args.pretrain_cache is not None:
        from regionprompt.world.scene_cache import SceneCache

        pretrain_captions = [c for r in SceneCache(args.pretrain_cache).records for c in r["captions"]]
    test_gt = args.test / "annotations.json" if args.test.is_dir() else args.test
    result = evaluate_teacher(model, test_gt=test_gt, val_dir=args.val_cache, val_images=args.val_images,
                              templates=args.templates, input_size=args.input_size,
                              pretrain_captions=pretrain_captions,
                              lvis_categories=json.loads(args.lvis.read_text()) if args.lvis else ())
    markdown = teacher_markdown(result)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "teacher_eval.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        (args.out / "teacher_eval.md").write_text(markdown)
    print(markdown, end="")
    return 0
