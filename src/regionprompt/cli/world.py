"""``regionprompt world``: build EmojiWorld splits, describe the concepts, render one scene."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from regionprompt.world.scene import SceneConfig
from regionprompt.world.splits import SPLITS

_STYLES = ("google", "twitter")


def _add_scene_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", required=True, choices=tuple(SPLITS), help="which split's labelling rules and seed stream to use")
    parser.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives the same scenes (default 0)")
    parser.add_argument("--size", type=int, default=320, help="canvas side in pixels (default 320)")
    parser.add_argument("--style", choices=_STYLES, default=None, help="draw every object in one artwork style (default: mix both)")


def _config(args: argparse.Namespace) -> SceneConfig:
    return SceneConfig(size=args.size, style=args.style)


def _build(args: argparse.Namespace) -> int:
    from regionprompt.world.build import build_world

    summary = build_world(
        args.out,
        split=args.split,
        num_images=args.images,
        seed=args.seed,
        config=_config(args),
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(
        f"{summary.split}: {summary.images} images, {summary.annotations} boxes, {summary.captions} captions"
        f" ({summary.unlabelled_objects} unlabelled objects) -> {summary.out_dir}"
    )
    return 0


def _cache(args: argparse.Namespace) -> int:
    from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache

    spec = SceneCacheSpec(split=args.split, seed=args.seed, num_images=args.images, size=args.size,
                          canvas=args.canvas, layout=args.layout)
    cache = build_scene_cache(spec, args.out, workers=args.workers)
    boxes = sum(len(r["objects"]) for r in cache.records)
    print(f"{spec.split} scene cache: {len(cache)} scenes at {spec.size} px ({spec.layout} layout), {boxes} objects -> {args.out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from regionprompt.world.concepts import load_concepts

    concepts = load_concepts()
    by_split = Counter(c.split for c in concepts)
    by_tier = Counter((c.split, c.frequency) for c in concepts)
    print(f"EmojiWorld concepts version {concepts.version}: {len(concepts)} concepts")
    print(f"  base {by_split['base']}, novel {by_split['novel']}")
    for tier, label in (("f", "frequent"), ("c", "common"), ("r", "rare")):
        total = by_tier[("base", tier)] + by_tier[("novel", tier)]
        print(f"  {label:9s} {total:5d}  (base {by_tier[('base', tier)]}, novel {by_tier[('novel', tier)]})")
    print("by category:")
    for category, count in sorted(Counter(c.category for c in concepts).items(), key=lambda kv: -kv[1]):
        novel = sum(1 for c in concepts if c.category == category and c.split == "novel")
        print(f"  {category:24s} {count:5d}  (novel {novel})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from regionprompt.draw import draw_boxes
    from regionprompt.world.concepts import load_concepts
    from regionprompt.world.render import SceneRenderer

    renderer = SceneRenderer.default(_config(args))
    scene = renderer.render(args.split, args.index, args.seed)
    concepts = load_concepts()
    objects = scene.labelled_objects if not args.all_objects else scene.objects
    names = [concepts.by_id(o.concept_id).name for o in objects]
    image = draw_boxes(scene.image, [o.box_xyxy for o in objects], names, label_ids=[o.concept_id for o in objects])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"{scene.file_name}: {len(scene.objects)} objects ({len(scene.labelled_objects)} labelled), background: {scene.background_phrase}")
    for obj, name in zip(objects, names):
        print(f"  {name:28s} box xywh={list(obj.box)} visible={obj.visible_fraction:.2f} style={obj.style}")
    for caption in scene.captions:
        print(f"  caption: {caption.text}")
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    world = subparsers.add_parser(
        "world",
        help="EmojiWorld: the synthetic open-vocabulary benchmark world",
        description="Build EmojiWorld splits (images + COCO boxes + captions), list its concepts, or render one scene.",
    )
    commands = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND")
    world.set_defaults(func=lambda _args: world.print_help() or 1)

    build = commands.add_parser(
        "build",
        help="render a split to DIR/images + annotations.json + captions.json",
        description="Render N scenes of a split. The same seed, split, size and style give byte-identical files.",
    )
    _add_scene_options(build)
    build.add_argument("--images", type=int, required=True, help="number of scenes to render")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    build.set_defaults(func=_build)

    cache = commands.add_parser(
        "cache",
        help="render a split into a scene cache (one .npy of pixels + records.jsonl) for training commands",
        description="Render scenes 0..N-1 of a split into the array-backed cache that `pseudo-label`, `train "
        "regions`, `train rpn` and `train detector` read (--cache). Interrupted rendering resumes when the same "
        "command is rerun; another spec on an existing folder is refused.",
    )
    cache.add_argument("--split", required=True, choices=tuple(SPLITS), help="EmojiWorld split")
    cache.add_argument("--images", type=int, required=True, help="number of scenes")
    cache.add_argument("--out", required=True, help="cache folder")
    cache.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    cache.add_argument("--size", type=int, default=320, help="side of the stored images in pixels (default 320)")
    cache.add_argument("--canvas", type=int, default=320, help="side of the rendered canvas in pixels (default 320)")
    cache.add_argument("--layout", choices=("scene", "iconic"), default="scene",
                       help="scene: the world's scenes; iconic: 1-3 large objects per image (default scene)")
    cache.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    cache.set_defaults(func=_cache)

    info = commands.add_parser("info", help="print concept counts by split, frequency tier and category",
                               description="Summarise the EmojiWorld concept vocabulary.")
    info.set_defaults(func=_info)

    show = commands.add_parser("show", help="render one scene with its ground-truth boxes drawn",
                               description="Render scene --index of a split and save it with its labelled boxes drawn.")
    _add_scene_options(show)
    show.add_argument("--index", type=int, default=0, help="scene index (default 0)")
    show.add_argument("--out", required=True, help="output image path (.png / .jpg)")
    show.add_argument("--all-objects", action="store_true", help="also draw objects the split leaves unlabelled")
    show.set_defaults(func=_show)
