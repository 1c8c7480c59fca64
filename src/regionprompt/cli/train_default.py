"""``regionprompt train default``: the whole pipeline of the shipped detector, from nothing, resumable."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

DESCRIPTION = (
    "Reproduce the default detector end to end: scene caches -> CLIP teacher (default: the committed RegionCLIP "
    "student weights/student8-minilm; --teacher-weights none trains one by iconic 64 px pretraining) -> "
    "class-agnostic RPN (default: the committed weights/rpn; --rpn-weights none trains one) -> T-Rex2 detector "
    "(v2 recipe) on the teacher's image tower and text side (--no-trex2: skip) -> region namer: the teacher "
    "tuned on base boxes and mixed back toward itself (--namer-steps 0: the teacher as it is) -> [--student: pseudo labels + "
    "region-text student] -> candidate detector folders (zero-shot RegionCLIP teacher [+ student], T-Rex2) -> "
    "evaluation of each (eval-detector --mode text on a 100-image EmojiWorld test build) -> the best by AP50 "
    "(ties: teacher, student, T-Rex2) as OUT/detector with model_card.json -> [--install: a float16 copy into "
    "the package's models/default, what Detector.load('default') reads]. Every stage resumes after an "
    "interruption and is skipped when its output is complete: rerun the same command. Run it from a clone of "
    "the repository (committed weights are read from ./weights). --fast runs every stage at toy size (tests)."
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("default", help="the default detector end to end (teacher, RPN, T-Rex2, detectors, "
                                 "eval, card)",
                                 description=DESCRIPTION)
    parser.add_argument("--out", type=Path, required=True, help="run folder (every stage's output, pipeline.json)")
    parser.add_argument("--fast", action="store_true", help="tiny profile: a few steps and scenes per stage (tests)")
    parser.add_argument("--student", action="store_true",
                        help="also pseudo-label pretrain scenes and train the RegionCLIP student (one more candidate; "
                        "the best by AP50 is kept)")
    parser.add_argument("--no-trex2", action="store_true",
                        help="do not train the T-Rex2 candidate (RegionCLIP detectors only)")
    parser.add_argument("--install", action="store_true",
                        help="copy the final detector into the package (regionprompt/models/default)")
    parser.add_argument("--install-to", type=Path, default=None, metavar="DIR",
                        help="install into DIR instead of the package folder (implies --install)")
    parser.add_argument("--fp32", action="store_true", help="install float32 weights (default: float16 when they "
                        "match float32)")
    parser.add_argument("--caches", type=Path, default=None, metavar="DIR",
                        help="scene-cache folder, shareable between runs (default OUT/caches)")
    parser.add_argument("--teacher-weights", default=None, metavar="DIR|none",
                        help="committed CLIP model folder used as the teacher (default profile: "
                        "weights/student8-minilm); 'none' trains the teacher")
    parser.add_argument("--rpn-weights", default=None, metavar="DIR|none",
                        help="committed proposal-network folder (default profile: weights/rpn); 'none' trains the RPN")
    parser.add_argument("--teacher-steps", type=int, default=None, help="override the teacher's steps")
    parser.add_argument("--rpn-steps", type=int, default=None, help="override the RPN's steps")
    parser.add_argument("--trex2-steps", type=int, default=None, help="override the T-Rex2 detector's steps")
    parser.add_argument("--student-steps", type=int, default=None, help="override the student's steps")
    parser.add_argument("--namer-steps", type=int, default=None,
                        help="the region namer's tuning schedule on base boxes, run to its end (default: 750 steps of a "
                        "1,500-step schedule; 0: the teacher names as it is)")
    parser.add_argument("--namer-mix", type=float, default=None,
                        help="weight of the tuned namer's image tower against the teacher's (default 0.7)")
    parser.add_argument("--pseudo-label-scenes", type=int, default=None, help="override the pseudo-labelled scene count")
    parser.add_argument("--eval-images", type=int, default=None, help="override the evaluation build's size")
    parser.add_argument("--input-size", type=int, default=None, help="override the detector's CLIP input side")
    parser.add_argument("--max-proposals", type=int, default=None, help="override the detector's proposals per image")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering scenes")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (default 2); use 1 while other jobs share the CPU")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from regionprompt.train.default_recipe import default_profile, fast_profile

    config = fast_profile() if args.fast else default_profile()
    changes = {}
    if args.student:
        changes["student"] = True
    for name in ("teacher_weights", "rpn_weights"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = None if value.lower() == "none" else value
    if args.teacher_steps is not None:
        changes["teacher"] = replace(config.teacher, steps=args.teacher_steps)
    if args.rpn_steps is not None:
        changes["rpn"] = replace(config.rpn, steps=args.rpn_steps)
    if args.no_trex2:
        changes["trex2"] = None
        changes["namer_tuning"] = None  # the namer names T-Rex2's boxes: nothing to tune without them
        changes["namer_stop_step"] = None
    elif args.namer_steps is not None and config.namer_tuning is not None:
        # A schedule of that length, run to its end (no time-box stop).
        changes["namer_tuning"] = replace(config.namer_tuning, steps=args.namer_steps) if args.namer_steps > 0 else None
        changes["namer_stop_step"] = None
    if args.namer_mix is not None:
        changes["namer_mix"] = args.namer_mix
    elif args.trex2_steps is not None and config.trex2 is not None:
        changes["trex2"] = replace(config.trex2, steps=args.trex2_steps)
    if args.student_steps is not None:
        changes["regions"] = replace(config.regions, steps=args.student_steps)
    if args.input_size is not None or args.max_proposals is not None:
        detector = config.detector
        if args.input_size is not None:
            detector = replace(detector, input_size=args.input_size)
        if args.max_proposals is not None:
            detector = replace(detector, max_proposals=args.max_proposals)
        changes["detector"] = detector
    for name in ("pseudo_label_scenes", "eval_images", "workers"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    try:
        return replace(config, **changes)
    except ValueError as exc:  # a stage config's own validation
        from regionprompt.errors import RegionPromptError

        raise RegionPromptError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.api import default_model_dir
    from regionprompt.train.default_pipeline import run_default_pipeline

    torch.set_num_threads(args.threads)
    config = config_from_args(args)
    install_to = args.install_to or (default_model_dir() if args.install else None)
    command = "regionprompt " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    result = run_default_pipeline(config, args.out, caches_dir=args.caches, install_to=install_to, half=not args.fp32,
                                  command=command)
    print(result.table(), end="")
    summary = result.card.get("evaluation", {}).get("summary", {})
    ap = ", ".join(f"{k} {100 * v:.1f}" for k, v in summary.items() if k in ("AP50", "AP50_base", "AP50_novel") and v is not None)
    print(f"detector: {result.detector_dir} (model card {result.detector_dir / 'model_card.json'}); text-prompt {ap or 'AP50 -'}")
    if result.installed is not None:
        print(f"installed: {result.installed} (Detector.load('default'))" if args.install_to is None
              else f"installed: {result.installed}")
    return 0
