"""``regionprompt concept``: make, list, show, remove, export and import saved prompt concepts.

The library is ``$REGIONPROMPT_HOME/concepts.db`` (default ``~/.regionprompt/concepts.db``) unless
``--library`` names another file; the server (``regionprompt serve``) can use the same file at the
same time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from regionprompt.errors import PromptError

_LIBRARY_HELP = "concept library file (default $REGIONPROMPT_HOME/concepts.db, i.e. ~/.regionprompt/concepts.db)"


class _Ordered(argparse.Action):
    """Append ``(option kind, value)`` to one shared list, so ``--image A --box .. --image B --box ..``
    keeps which box belongs to which image."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, "visual", None) or [])
        items.append((self.dest, values))
        namespace.visual = items


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}") from None
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _box(text: str) -> tuple[float, ...]:
    return _numbers(text, 4, "a box (x1,y1,x2,y2)")


def _point(text: str) -> tuple[float, ...]:
    return _numbers(text, 2, "a point (x,y)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "concept",
        help="saved prompt concepts: add, list, show, remove, export, import",
        description="Save a prompt (text, exemplar boxes/points on images, or both, with negatives) as a named "
        "concept embedding, reuse it in detection (--concept NAME), move it between machines as a .safetensors file.",
    )
    commands = parser.add_subparsers(dest="concept_command", metavar="ACTION")

    add = commands.add_parser(
        "add",
        help="make a concept from prompts with a model and store it",
        description="Make concept NAME from text phrases and/or exemplars. Exemplars follow the image they are "
        "drawn on: --image a.png --box 10,10,50,60 --box 70,5,90,30 --image b.png --point 40,40. Negative "
        "exemplars follow --negative-image (or the last --image). Coordinates are pixels.",
        epilog="example: regionprompt concept add 'red apple' --text 'red apple' --image a.png --box 12,30,80,95",
    )
    add.add_argument("name", help="the concept's name (shown on detections)")
    add.add_argument("--text", action="append", default=[], metavar="PHRASE", help="a text prompt (repeatable)")
    add.add_argument("--image", dest="image", action=_Ordered, metavar="IMAGE", help="image the following boxes/points are on")
    add.add_argument("--box", dest="box", action=_Ordered, type=_box, metavar="X1,Y1,X2,Y2", help="an exemplar box")
    add.add_argument("--point", dest="point", action=_Ordered, type=_point, metavar="X,Y", help="an exemplar click")
    add.add_argument("--negative-text", action="append", default=[], metavar="PHRASE", help="a phrase NOT to detect")
    add.add_argument("--negative-image", dest="negative_image", action=_Ordered, metavar="IMAGE",
                     help="image the following negative boxes/points are on (default: the last --image)")
    add.add_argument("--negative-box", dest="negative_box", action=_Ordered, type=_box, metavar="X1,Y1,X2,Y2",
                     help="a box around something NOT to detect")
    add.add_argument("--negative-point", dest="negative_point", action=_Ordered, type=_point, metavar="X,Y",
                     help="a click on something NOT to detect")
    add.add_argument("--model", default="default", help="detector folder, or 'default' (the shipped model)")
    add.add_argument("--library", type=Path, help=_LIBRARY_HELP)
    add.add_argument("--replace", action="store_true", help="overwrite a concept of the same name")
    add.set_defaults(func=run_add, visual=[])

    listing = commands.add_parser("list", help="list the library's concepts", description="List the library's concepts.")
    listing.add_argument("--library", type=Path, help=_LIBRARY_HELP)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)

    show = commands.add_parser("show", help="show one concept", description="Show one concept and the prompts it came from.")
    show.add_argument("name")
    show.add_argument("--library", type=Path, help=_LIBRARY_HELP)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run_show)

    remove = commands.add_parser("remove", help="delete a concept", description="Delete a concept from the library.")
    remove.add_argument("name")
    remove.add_argument("--library", type=Path, help=_LIBRARY_HELP)
    remove.set_defaults(func=run_remove)

    export = commands.add_parser(
        "export", help="write a concept to a .safetensors file",
        description="Write a concept to a .safetensors file (embedding, negatives; name, model hash, sources in its header).",
    )
    export.add_argument("name")
    export.add_argument("out", type=Path, metavar="FILE", help="file to write (e.g. dog.safetensors)")
    export.add_argument("--library", type=Path, help=_LIBRARY_HELP)
    export.set_defaults(func=run_export)

    imp = commands.add_parser("import", help="add a concept file to the library", description="Add a concept .safetensors file.")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--name", help="store it under this name instead of its own")
    imp.add_argument("--replace", action="store_true", help="overwrite a concept of the same name")
    imp.add_argument("--library", type=Path, help=_LIBRARY_HELP)
    imp.set_defaults(func=run_import)

    parser.set_defaults(func=lambda _args: parser.print_help() or 1)


def _library(args: argparse.Namespace) -> Any:
    from regionprompt.concepts.library import ConceptLibrary

    return ConceptLibrary(args.library)


def _exemplars(visual: list[tuple[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """Ordered ``--image/--box/--point/--negative-*`` options -> boxes, points, negative prompts (with images)."""
    from regionprompt.images import load_image
    from regionprompt.prompts import BoxPrompt, PointPrompt

    loaded: dict[str, Any] = {}

    def image(path: str) -> Any:
        if path not in loaded:
            loaded[path] = load_image(path)
        return loaded[path]

    boxes: list[Any] = []
    points: list[Any] = []
    negatives: list[Any] = []
    current = negative_current = None
    for kind, value in visual:
        if kind == "image":
            current = image(value)
        elif kind == "negative_image":
            negative_current = image(value)
        else:
            negative = kind.startswith("negative_")
            where = (negative_current or current) if negative else current
            flag = "--" + kind.replace("_", "-")
            if where is None:
                raise PromptError(f"{flag} {','.join(f'{v:g}' for v in value)} needs an --image before it")
            prompt = (BoxPrompt(value, where.image, negative=negative) if kind.endswith("box")
                      else PointPrompt(value, where.image, negative=negative))
            try:
                prompt.check_inside(where.wh)
            except PromptError as exc:
                raise PromptError(f"{flag}: {exc} ({where.name})") from None
            (negatives if negative else boxes if kind == "box" else points).append(prompt)
    return boxes, points, negatives


def run_add(args: argparse.Namespace) -> int:
    from regionprompt.api import Detector
    from regionprompt.concepts.library import ConceptExistsError, check_name
    from regionprompt.prompts import TextPrompt

    name = check_name(args.name)
    boxes, points, negatives = _exemplars(args.visual)
    negatives += [TextPrompt(t, negative=True) for t in args.negative_text]
    if not (args.text or boxes or points):
        raise PromptError("give at least one --text, or an --image with --box/--point exemplars")
    library = _library(args)
    if not args.replace and name in library:
        raise ConceptExistsError(f"a concept named {name!r} already exists in {library.path} (use --replace)")
    detector = Detector.load(args.model, concept_library=library)
    concept = detector.make_concept(name, text=args.text or None, boxes=boxes or None, points=points or None,
                                    negatives=negatives or None)
    info = library.add(concept, replace=args.replace)
    print(f"saved concept {info.name!r}: {info.num_sources} source(s), {info.num_negatives} negative(s), "
          f"model {info.model_hash[:12]}, {info.dim}-d -> {library.path}")
    return 0


def _describe_source(source: dict[str, Any]) -> str:
    kind = source.get("kind", "?")
    sign = "not " if source.get("negative") else ""
    if "text" in source:
        return f"{sign}text {source['text']!r}"
    for key in ("box", "point"):
        if key in source:
            where = source.get("image_sha256") or source.get("image") or ""
            where = f" on image {str(where)[:12]}" if where else ""
            return f"{sign}{key} {[round(float(v), 1) for v in source[key]]}{where}"
    return f"{sign}{kind} " + json.dumps(source, sort_keys=True)[:80]


def run_list(args: argparse.Namespace) -> int:
    library = _library(args)
    infos = library.list()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print(f"no concepts in {library.path}")
        return 0
    width = max(4, *(len(i.name) for i in infos))
    print(f"{'name':<{width}}  model         created               sources  negatives")
    for i in infos:
        print(f"{i.name:<{width}}  {i.model_hash[:12]:<12}  {i.created:<20}  {i.num_sources:>7}  {i.num_negatives:>9}")
    print(f"{len(infos)} concept(s) in {library.path}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    info = _library(args).info(args.name)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    print(f"name:       {info.name}\nmodel hash: {info.model_hash}\ncreated:    {info.created}\n"
          f"embedding:  {info.dim}-d\nnegatives:  {info.num_negatives}\nsources:    {info.num_sources}")
    for source in info.sources:
        print(f"  - {_describe_source(source)}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    library = _library(args)
    name = library.info(args.name).name
    library.remove(name)
    print(f"removed concept {name!r} from {library.path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    path = _library(args).export(args.name, args.out)
    print(f"wrote {path}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    library = _library(args)
    info = library.import_file(args.file, replace=args.replace, name=args.name)
    print(f"imported concept {info.name!r} (model {info.model_hash[:12]}) -> {library.path}")
    return 0
