"""``regionprompt detect``: find prompted objects in images; annotated images + one JSON per image.

Also holds the prompt options shared with ``regionprompt label`` (:func:`add_prompt_options`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from regionprompt.data.files import atomic_write, atomic_write_text
from regionprompt.draw import draw_prompts
from regionprompt.errors import ImageLoadError, PromptError
from regionprompt.images import load_image
from regionprompt.logging_utils import progress

BATCH = 4  # images per predict call: bounded memory, one backbone pass per batch


def _coords(value: str, count: int, what: str) -> dict[str, Any]:
    """``"x1,y1,x2,y2[:label]"`` -> ``{"box": (...), "label": ...}`` (``"point"`` for 2 numbers)."""
    numbers, _, label = value.partition(":")
    parts = [p for p in numbers.replace(" ", "").split(",") if p]
    try:
        coords = tuple(float(p) for p in parts)
    except ValueError:
        coords = ()
    if len(coords) != count or len(parts) != count:
        shape = "X1,Y1,X2,Y2" if count == 4 else "X,Y"
        raise PromptError(f"{what} {value!r}: expected {shape} in pixels, optionally followed by :LABEL")
    return {"box" if count == 4 else "point": coords, "label": label.strip() or None}


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """Prompt, model and threshold options shared by ``detect`` and ``label``."""
    group = parser.add_argument_group("prompts (at least one text phrase, box, point or concept)")
    group.add_argument("--text", action="append", default=[], metavar="PHRASES",
                       help='what to find, e.g. "dog, red apple" (comma-separated; repeatable)')
    group.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2[:LABEL]",
                       help="an exemplar box in pixels of --box-image; boxes without LABEL form the category "
                            "--visual-label; a LABEL equal to a --text phrase makes a mixed prompt (repeatable)")
    group.add_argument("--point", action="append", default=[], metavar="X,Y[:LABEL]",
                       help="an exemplar click on one object (repeatable)")
    group.add_argument("--box-image", type=Path, metavar="IMAGE",
                       help="the image the boxes and points were drawn on")
    group.add_argument("--negative-box", action="append", default=[], metavar="X1,Y1,X2,Y2[:LABEL]",
                       help="an example of what NOT to detect, on --box-image (LABEL: only for that category)")
    group.add_argument("--negative-text", action="append", default=[], metavar="PHRASE",
                       help="a phrase of what NOT to detect (applies to every category)")
    group.add_argument("--concept", action="append", default=[], metavar="NAME",
                       help="a saved concept from the concept library (repeatable)")
    group.add_argument("--concepts-db", type=Path, metavar="FILE",
                       help="concept library file (default: the user's library, $REGIONPROMPT_HOME)")
    group.add_argument("--visual-label", default="object", metavar="NAME",
                       help="category name of unlabelled boxes and points (default: object)")
    parser.add_argument("--model", default="default", metavar="DIR",
                        help="detector folder (RegionCLIP or T-Rex2, or a T-Rex2 training run's model/); default: the model shipped with the package")
    parser.add_argument("--threshold", type=float, default=None,
                        help="minimum score in [0, 1] (default: the model's own, 0.2 for the shipped T-Rex2)")
    parser.add_argument("--cache", default="default", metavar="FILE",
                        help="text-embedding cache file, or 'none' (default: ~/.cache/regionprompt/embeddings.sqlite)")


def load_detector(args: argparse.Namespace) -> Any:
    """The :class:`~regionprompt.api.Detector` the options name (with its concept library)."""
    from regionprompt.api import DEFAULT_MODEL_ENV, Detector

    library = None
    if args.concepts_db is not None or args.concept:
        from regionprompt.concepts.library import ConceptLibrary

        library = ConceptLibrary(args.concepts_db)
    cache = None if args.cache == "none" else args.cache
    if str(args.model) == "default" and not os.environ.get(DEFAULT_MODEL_ENV):
        # Said once per command, on stderr (JSON and dataset outputs stay clean): the shipped model's scope.
        print("note: the default model knows EmojiWorld's 1,177 emoji concepts only, not real photos; "
              "use --model with real weights for photos (README, 'What the shipped model knows')", file=sys.stderr)
    return Detector.load(args.model, cache=cache, concept_library=library)


def prompt_arguments(args: argparse.Namespace, prompt_image: Any) -> dict[str, Any]:
    """``Detector.predict`` / ``make_concepts`` keyword arguments from the prompt options."""
    boxes = [_coords(v, 4, "--box") for v in args.box]
    points = [_coords(v, 2, "--point") for v in args.point]
    negatives: list[Any] = [_coords(v, 4, "--negative-box") for v in args.negative_box]
    negatives += [phrase for phrase in args.negative_text]
    return {
        "text": ", ".join(args.text) if args.text else None,
        "boxes": boxes or None,
        "points": points or None,
        "prompt_images": str(prompt_image) if prompt_image is not None else None,
        "negatives": negatives or None,
        "visual_label": args.visual_label,
    }


def check_prompt_options(args: argparse.Namespace) -> None:
    """The limits the Python API applies (:data:`~regionprompt.prompts.MAX_PROMPTS` prompts per call,
    :data:`~regionprompt.prompts.MAX_TEXT_LENGTH` characters per phrase), checked before the model loads
    so that a refused command answers at once."""
    from regionprompt.prompts import check_prompt_count, check_text_length, split_phrases

    phrases = [p for text in args.text for p in split_phrases(text)] + list(args.negative_text)
    for phrase in phrases:
        check_text_length(phrase, "--text/--negative-text phrase")
    check_text_length(args.visual_label, "--visual-label")
    check_prompt_count(len(phrases) + len(args.box) + len(args.point) + len(args.negative_box))


def has_prompts(args: argparse.Namespace) -> bool:
    return bool(args.text or args.box or args.point or args.concept)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects from text / box / point prompts; write annotated images and JSON",
        description=(
            "Find what the prompts describe in each IMAGE and write OUT/<name>.png (boxes, names, scores drawn) "
            "and OUT/<name>.json (image size, prompts, detections: box [x1, y1, x2, y2] pixels, score, name); "
            "on the image they were drawn on, the prompt boxes and points are drawn too (white; negatives red). "
            "Boxes and points are drawn on --box-image, or on the first IMAGE when it is not given; they then "
            "find more of the same in every IMAGE."
        ),
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    add_prompt_options(parser)
    parser.add_argument("--one-label-per-box", action="store_true",
                        help="class-agnostic NMS: an object found by several prompts keeps only its best label")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.set_defaults(func=run)


def _output_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique (``a``, ``a_2``) so two inputs never write the same output."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem, 2
        while stem in used:
            stem, n = f"{path.stem}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def check_files_exist(paths: list[Path]) -> None:
    """Refuse at once (before the model loads) an IMAGE or --box-image path that does not exist: a
    typo is a usage error (``error: ...``, exit status 2). Files that exist but cannot be read are
    skipped during the run and reported (exit status 1)."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ImageLoadError(f"no such file: {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


def run(args: argparse.Namespace) -> int:
    check_files_exist([*args.images, *([args.box_image] if args.box_image else [])])
    if not has_prompts(args):
        raise PromptError("no prompt given: use --text, --box, --point or --concept")
    check_prompt_options(args)
    detector = load_detector(args)
    prompt_image = args.box_image or (args.images[0] if (args.box or args.point or args.negative_box) else None)
    kwargs = prompt_arguments(args, prompt_image)
    args.out.mkdir(parents=True, exist_ok=True)
    stems = _output_stems(args.images)
    failed = []
    batches = [list(range(i, min(i + BATCH, len(args.images)))) for i in range(0, len(args.images), BATCH)]
    for batch in progress(batches, desc="detecting", unit="batch"):
        loaded = []
        for i in batch:
            try:
                loaded.append((i, load_image(args.images[i])))
            except ImageLoadError as exc:
                failed.append(str(exc))
                print(f"skipped: {exc}", file=sys.stderr)
        if not loaded:
            continue
        results = detector.predict([image for _, image in loaded], concepts=args.concept or None,
                                   threshold=args.threshold, one_label_per_box=args.one_label_per_box, **kwargs)
        for (i, image), dets in zip(loaded, results):
            stem = stems[i]
            drawn = dets.plot(image.image)
            if prompt_image is not None and Path(args.images[i]).resolve() == Path(prompt_image).resolve():
                draw_prompts(drawn, [b["box"] for b in kwargs["boxes"] or []], [p["point"] for p in kwargs["points"] or []],
                             [n["box"] for n in kwargs["negatives"] or [] if isinstance(n, dict)])
            atomic_write(args.out / f"{stem}.png", lambda tmp, d=drawn: d.save(tmp, format="PNG"))
            atomic_write_text(args.out / f"{stem}.json", dets.to_json() + "\n")
            counts: dict[str, int] = {}
            for name in dets.label_names:
                counts[name] = counts.get(name, 0) + 1
            summary = ", ".join(f"{name} {count}" for name, count in counts.items()) or "nothing"
            print(f"{args.images[i]}: {len(dets)} detections ({summary}) -> {args.out / stem}.png")
    if failed:
        print(f"{len(failed)} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0
