"""``regionprompt demo``: what ``make demo`` runs -- real detections of the default model on EmojiWorld.

Renders ``--images`` EmojiWorld ``test`` scenes and runs four kinds of prompt on each:

* **text**: the names of the objects in the scene plus ``--distractors`` names of absent objects;
* **interactive visual**: one ground-truth box drawn on the scene (on the object that has the most
  copies) -- "find more like this";
* **generic visual**: a box on the same kind of object in *another* scene (another test scene, or a
  ``val`` scene rendered for it) -- "find this, seen elsewhere";
* **mixed**: the object's name and that exemplar box as one category.

Writes ``OUT/<scene>.png`` (the four results side by side, drawn boxes at ``--threshold``), ``OUT/<scene>.json``
(prompts, ground truth, detections) and ``OUT/summary.md`` (what ran and what the pictures show).

One protocol is reported, the one the pictures show: at the drawn threshold, how many objects of each
prompt were found (a detection of their name at IoU >= 0.5) and how many drawn detections are right.
The model's measured AP (every test image searched for all 1,177 names, ``eval-detector``) is quoted
from its model card, labelled as such; the demo computes no AP of its own (an AP over "the names
present + a few absent ones" is a far easier protocol and read as if it were the model's quality).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PANEL_TITLE_HEIGHT = 16
MAX_DRAWN = 25  # boxes drawn per panel (the best ones); the JSON keeps every detection above the threshold
MAX_VAL_SCENES = 600  # val scenes rendered at most while looking for exemplars of other scenes' objects


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo (what `make demo` runs): real detections of the default model",
        description="Render EmojiWorld test scenes and detect on them with the default model (or --model DIR): "
        "text prompts (the objects present + absent distractors), an interactive box prompt, a generic box prompt "
        "from another scene and a mixed text + box prompt. Writes annotated PNGs, JSON per scene and summary.md "
        "(objects found and detections right at the drawn threshold) to --out.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--model", type=Path, default=None, metavar="DIR",
                        help="detector folder (default: the model shipped in the package)")
    parser.add_argument("--images", type=int, default=12, help="test scenes (default 12)")
    parser.add_argument("--seed", type=int, default=1, help="world seed of the test scenes (default 1)")
    parser.add_argument("--distractors", type=int, default=3, help="absent object names added to each text prompt (default 3)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score of the drawn detections (default: the model's own, 0.2 for the shipped T-Rex2)")
    parser.add_argument("--max-proposals", type=int, default=100,
                        help="proposals per image at most (default 100; the model's own setting when lower); "
                        "region embedding dominates the time per image")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on our shared 2-core machine 2 threads made the demo 3.5x slower)")
    parser.set_defaults(func=run)


# ---- scenes and prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """One labelled object: box ``(4,)`` xyxy pixels."""

    name: str
    category_id: int
    split: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Exemplar:
    """A box on an object in another image: the generic visual prompt."""

    name: str
    image: Path
    box: tuple[float, float, float, float]
    source: str  # e.g. "test_000004.png" or "val_000031.png (seed 2)"


def scene_objects(gt: Mapping[str, Any]) -> dict[int, list[GroundTruth]]:
    """Labelled objects per image id."""
    categories = {c["id"]: c for c in gt["categories"]}
    out: dict[int, list[GroundTruth]] = {image["id"]: [] for image in gt["images"]}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        category = categories[ann["category_id"]]
        out[ann["image_id"]].append(GroundTruth(category["name"], category["id"], category.get("split", ""), (x, y, x + w, y + h)))
    return out


def interactive_target(objects: Sequence[GroundTruth]) -> GroundTruth | None:
    """The object to draw the box on: of the kind with the most copies, the largest copy."""
    if not objects:
        return None
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.name] = counts.get(o.name, 0) + 1
    return max(objects, key=lambda o: (counts[o.name], (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])))


def distractor_names(present: set[str], vocabulary: Sequence[str], count: int, key: str) -> list[str]:
    """``count`` names of absent objects, the same for the same ``key``."""
    absent = [n for n in vocabulary if n not in present]
    return sorted(random.Random(key).sample(absent, min(count, len(absent))))


def find_exemplars(objects: Mapping[int, list[GroundTruth]], files: Mapping[int, Path], out_dir: Path,
                   seed: int) -> dict[int, Exemplar]:
    """Per test image, a box on one of its kinds of object in another image: another test scene when one
    shares a kind, else a ``val`` scene (seed ``seed + 1``) rendered until one holds it."""
    found: dict[int, Exemplar] = {}
    for image_id, mine in objects.items():
        for other_id, theirs in objects.items():
            if other_id == image_id:
                continue
            shared = [o for o in theirs if o.name in {m.name for m in mine}]
            if shared:
                best = max(shared, key=lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
                found[image_id] = Exemplar(best.name, files[other_id], best.box, files[other_id].name)
                break
    missing = {i for i in objects if i not in found and objects[i]}
    if not missing:
        return found
    from regionprompt.world.render import SceneRenderer

    renderer = SceneRenderer.default()
    for index in range(MAX_VAL_SCENES):
        scene = renderer.render("val", index, seed + 1)
        names = {o.concept_id: o for o in scene.labelled_objects}
        hits = {i: [o for o in objects[i] if o.category_id in names] for i in missing}
        hits = {i: h for i, h in hits.items() if h}
        if not hits:
            continue
        path = out_dir / f"val_{index:06d}_seed{seed + 1}.png"
        scene.image.save(path)
        for image_id, shared in hits.items():
            obj = names[shared[0].category_id]
            found[image_id] = Exemplar(shared[0].name, path, tuple(float(v) for v in obj.box_xyxy), f"{path.name}")
        missing -= set(hits)
        if not missing:
            break
    return found


# ---- drawing ---------------------------------------------------------------------------------------------


def _panel(image: Any, dets: Any, title: str, *, prompt_box: Sequence[float] | None = None,
           exemplar: Exemplar | None = None) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    drawn = dets.topk(MAX_DRAWN).plot(image)
    draw = ImageDraw.Draw(drawn)
    if prompt_box is not None:  # the prompt: white over black, unlike any detection colour
        draw.rectangle(list(prompt_box), outline=(0, 0, 0), width=4)
        draw.rectangle(list(prompt_box), outline=(255, 255, 255), width=2)
    if exemplar is not None:  # a thumbnail of the exemplar, bottom right
        with Image.open(exemplar.image) as source:
            x1, y1, x2, y2 = (round(v) for v in exemplar.box)
            crop = source.convert("RGB").crop((max(0, x1 - 4), max(0, y1 - 4), x2 + 4, y2 + 4))
        crop.thumbnail((72, 72))
        w, h = drawn.size
        at = (w - crop.width - 4, h - crop.height - 4)
        draw.rectangle((at[0] - 2, at[1] - 2, at[0] + crop.width + 1, at[1] + crop.height + 1), outline=(255, 255, 255), width=2)
        drawn.paste(crop, at)
    panel = Image.new("RGB", (drawn.width, drawn.height + PANEL_TITLE_HEIGHT), (255, 255, 255))
    panel.paste(drawn, (0, PANEL_TITLE_HEIGHT))
    font, pen = ImageFont.load_default(), ImageDraw.Draw(panel)
    while len(title) > 4 and pen.textlength(title, font=font) > panel.width - 6:
        title = title.removesuffix("...")[:-1] + "..."
    pen.text((3, 2), title, fill=(0, 0, 0), font=font)
    return panel


def _grid(panels: Sequence[Any]) -> Any:
    from PIL import Image

    w, h = panels[0].size
    columns = 2
    rows = (len(panels) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * w + (columns - 1) * 4, rows * h + (rows - 1) * 4), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(panel, ((i % columns) * (w + 4), (i // columns) * (h + 4)))
    return canvas


# ---- scoring ---------------------------------------------------------------------------------------------


def found_instances(dets: Any, objects: Sequence[GroundTruth], name: str, threshold: float, iou: float = 0.5) -> tuple[int, int]:
    """(objects of kind ``name`` hit by a detection of that name scoring >= ``threshold`` at IoU >= ``iou``, objects of that kind)."""
    import torch
    from torchvision.ops import box_iou

    truth = [o.box for o in objects if o.name == name]
    kept = dets.filter(threshold)
    boxes = kept.boxes[[n == name for n in kept.label_names]] if len(kept) else kept.boxes
    if not truth or not len(boxes):
        return 0, len(truth)
    hits = box_iou(torch.tensor(truth, dtype=torch.float32), boxes).max(dim=1).values >= iou
    return int(hits.sum()), len(truth)


def correct_detections(dets: Any, objects: Sequence[GroundTruth], threshold: float, iou: float = 0.5) -> tuple[int, int]:
    """(detections scoring >= ``threshold`` that lie on an object of their name at IoU >= ``iou``, such detections)."""
    import torch
    from torchvision.ops import box_iou

    kept = dets.filter(threshold)
    correct = 0
    for box, name in zip(kept.boxes, kept.label_names):
        truth = [o.box for o in objects if o.name == name]
        if truth and float(box_iou(box[None], torch.tensor(truth, dtype=torch.float32)).max()) >= iou:
            correct += 1
    return correct, len(kept)


def _detections_json(dets: Any, threshold: float) -> list[dict[str, Any]]:
    return dets.filter(threshold).to_dict()["detections"]


# ---- the command -----------------------------------------------------------------------------------------


def demo_scene(detector: Any, path: Path, objects: Sequence[GroundTruth], concepts: Sequence[Any],
               present: Sequence[str], exemplar: Exemplar | None, threshold: float, out: Path) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """The four prompts on one scene: its JSON record, its table row and the drawn panels."""
    from regionprompt.images import load_image

    image = load_image(path)
    record: dict[str, Any] = {"image": str(path.relative_to(out)), "threshold": threshold,
                              "ground_truth": [{"name": o.name, "split": o.split, "box": list(o.box)} for o in objects]}
    panels: list[Any] = []
    hits, correct, drawn = 0, 0, 0
    if concepts:
        [text] = detector.predict(image, concepts=list(concepts), threshold=threshold)
        hits = sum(found_instances(text, objects, n, threshold)[0] for n in present)
        correct, drawn = correct_detections(text, objects, threshold)
        panels.append(_panel(image.image, text, f"text: {len(present)} names + {len(concepts) - len(present)} absent"))
        record["text"] = {"prompts": list(present), "found": hits, "objects": len(objects), "correct": correct,
                          "drawn": drawn, "detections": _detections_json(text, threshold)}
    else:
        record["text"] = {"prompts": [], "found": 0, "objects": 0, "correct": 0, "drawn": 0, "detections": []}
    row: dict[str, Any] = {"scene": path.name, "objects": len(objects), "text": f"{hits}/{len(objects)}",
                           "found": hits, "correct": correct, "drawn": drawn}
    target = interactive_target(objects)
    if target is not None:
        prompt = {"box": list(target.box), "label": target.name}
        [found] = detector.predict(image, boxes=[prompt], threshold=0.0)
        hit, total = found_instances(found, objects, target.name, threshold)
        record["interactive"] = {"prompt": prompt, "found": hit, "instances": total,
                                 "detections": _detections_json(found, threshold)}
        panels.append(_panel(image.image, found.filter(threshold), f"box on '{target.name}' (white)", prompt_box=target.box))
        row["interactive"] = f"{target.name}: {hit}/{total}"
    if exemplar is not None:
        prompt = {"box": list(exemplar.box), "label": exemplar.name}
        source = load_image(exemplar.image)
        [generic] = detector.predict(image, boxes=[prompt], prompt_images=source, threshold=0.0)
        [mixed] = detector.predict(image, text=[exemplar.name], boxes=[prompt], prompt_images=source, threshold=0.0)
        for key, dets, title in (("generic", generic, f"box on '{exemplar.name}' in {exemplar.source}"),
                                 ("mixed", mixed, f"'{exemplar.name}' + that box")):
            hit, total = found_instances(dets, objects, exemplar.name, threshold)
            record[key] = {"prompt": {**prompt, "image": str(exemplar.image.relative_to(out))}, "found": hit,
                           "instances": total, "detections": _detections_json(dets, threshold)}
            panels.append(_panel(image.image, dets.filter(threshold), title, exemplar=exemplar))
            row[key] = f"{exemplar.name}: {hit}/{total}"
    return record, row, panels


def _model_dir(args: argparse.Namespace) -> Path:
    from regionprompt.api import DETECTOR_FILE, default_model_dir
    from regionprompt.errors import CheckpointError

    if args.model is not None:
        return args.model
    folder = default_model_dir()
    if not (folder / DETECTOR_FILE).is_file():
        raise CheckpointError(f"the default model is not installed (no {DETECTOR_FILE} in {folder}); build it with "
                              "`regionprompt train default --out runs/default --install` (or pass --model DIR)")
    return folder


def _capped(detector: Any, max_proposals: int) -> Any:
    """``detector`` asking for at most ``max_proposals`` proposals per image (same models and cache)."""
    if getattr(detector.config, "max_proposals", 0) <= max_proposals:
        return detector
    return detector.reconfigure(max_proposals=max_proposals)


def run(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.api import Detector
    from regionprompt.data.files import atomic_write, atomic_write_text, dump_json
    from regionprompt.errors import RegionPromptError
    from regionprompt.logging_utils import progress
    from regionprompt.world.build import build_world

    if args.images < 1 or args.max_proposals < 1:
        raise RegionPromptError(f"--images and --max-proposals must be >= 1, got {args.images} and {args.max_proposals}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise RegionPromptError(f"--threshold must be in [0, 1], got {args.threshold}")
    began = time.perf_counter()
    model_dir = _model_dir(args)
    torch.set_num_threads(max(1, args.threads))
    detector = _capped(Detector.load(model_dir), args.max_proposals)
    if args.threshold is None:
        args.threshold = detector.default_threshold
    out: Path = args.out
    scenes_dir, exemplar_dir = out / "scenes", out / "exemplars"
    build_world(scenes_dir, split="test", num_images=args.images, seed=args.seed, overwrite=True)
    # Results of an earlier, larger run would sit beside this run's and be taken for them.
    for stale in [*out.glob("test_[0-9]*.png"), *out.glob("test_[0-9]*.json"), *exemplar_dir.glob("val_*.png")]:
        stale.unlink()
    exemplar_dir.mkdir(parents=True, exist_ok=True)
    gt = json.loads((scenes_dir / "annotations.json").read_text(encoding="utf-8"))
    files = {image["id"]: scenes_dir / "images" / image["file_name"] for image in gt["images"]}
    objects = scene_objects(gt)
    ids_by_name = {c["name"]: c["id"] for c in gt["categories"]}
    vocabulary = sorted(ids_by_name)
    exemplars = find_exemplars(objects, files, exemplar_dir, args.seed)

    prompts = {i: sorted({o.name for o in objects[i]}) for i in objects}
    distractors = {i: distractor_names(set(prompts[i]), vocabulary, args.distractors, f"{args.seed}:{i}") for i in objects}
    # Every name is embedded once; each scene then searches for its own subset.
    concepts = {c.name: c for c in detector.make_concepts(text=sorted({n for i in objects for n in prompts[i] + distractors[i]}),
                                                           max_prompts=None)}

    rows: list[dict[str, Any]] = []
    for image_id in progress(list(objects), desc="demo", unit="scene"):
        path = files[image_id]
        prompted = [concepts[n] for n in prompts[image_id] + distractors[image_id]]
        record, row, panels = demo_scene(detector, path, objects[image_id], prompted, prompts[image_id],
                                                  exemplars.get(image_id), args.threshold, out)
        record["text"]["distractors"] = distractors[image_id]
        if panels:
            grid = _grid(panels)
            atomic_write(out / f"{path.stem}.png", lambda tmp, g=grid: g.save(tmp, format="PNG"))
        atomic_write_text(out / f"{path.stem}.json", dump_json(record, indent=2))
        rows.append(row)

    seconds = time.perf_counter() - began
    summary = _summary_markdown(detector, model_dir, args, rows, seconds)
    atomic_write_text(out / "summary.md", summary)
    _print_table(rows, args)
    print(_measured_line(_model_card(model_dir)))
    print(f"\nwrote {len(rows)} annotated scenes (PNG + JSON) and summary.md to {out}/ in {seconds:.0f} s")
    print("try it yourself: regionprompt serve   (web UI on http://127.0.0.1:8000)")
    return 0


def text_totals(rows: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """One sentence: the text prompts' objects found and drawn detections right, over all scenes."""
    from regionprompt.eval.report import percent

    found, objects = sum(r["found"] for r in rows), sum(r["objects"] for r in rows)
    correct, drawn = sum(r["correct"] for r in rows), sum(r["drawn"] for r in rows)
    return (f"text prompts at score >= {threshold}: found {found} of {objects} objects ({percent(found / objects if objects else None)} %), "
            f"{correct} of {drawn} drawn detections right ({percent(correct / drawn if drawn else None)} %)")


def _measured_line(card: Mapping[str, Any]) -> str:
    """The model card's text AP50 (every test image searched for all 1,177 names), or a pointer to it."""
    from regionprompt.eval.report import percent

    evaluation = card.get("evaluation") if isinstance(card.get("evaluation"), dict) else {}
    official = evaluation.get("summary") if isinstance(evaluation.get("summary"), dict) else {}
    if not official:
        return "measured quality: `regionprompt eval-detector --mode text` (every image searched for all 1,177 names)"
    return (f"measured quality (model card, {evaluation.get('data', 'EmojiWorld test')}, every image searched for all "
            f"1,177 names): text AP50 all {percent(official.get('AP50'))}, base {percent(official.get('AP50_base'))}, "
            f"novel {percent(official.get('AP50_novel'))}")


def _print_table(rows: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> None:
    header = ("scene", "objects", "text found", "box here", "box elsewhere", "mixed")
    lines = [header] + [(r["scene"], str(r["objects"]), r["text"], r.get("interactive", "-"), r.get("generic", "-"),
                         r.get("mixed", "-")) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    print(f"\nfound = objects hit by a detection of their name scoring >= {args.threshold} (IoU >= 0.5)")
    print(text_totals(rows, args.threshold))


def _model_card(model_dir: Path) -> dict[str, Any]:
    """The folder's ``model_card.json`` (written by ``regionprompt train default``), or ``{}``."""
    try:
        card = json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _summary_markdown(detector: Any, model_dir: Path, args: argparse.Namespace, rows: Sequence[Mapping[str, Any]],
                      seconds: float) -> str:
    card = _model_card(model_dir)
    description = card.get("description") if isinstance(card.get("description"), str) else ""
    lines = [
        "# RegionPrompt demo",
        "",
        f"Model: `{model_dir}` (model hash {detector.model_hash[:12]})." + (f" {description}" if description else ""),
        (f"Scenes: {len(rows)} EmojiWorld test scenes, seed {args.seed} (`scenes/`); "
         + (f"up to {detector.config.max_proposals} proposals per image; " if detector.kind != "trex2"
            else "a T-Rex2 detector; ")
         + f"{seconds:.0f} s in all."),
        "",
        f"What ran on every scene (drawn: detections scoring at least {args.threshold}; panels left to right, top to bottom):",
        "",
        f"1. **text**: the names of the objects in the scene plus {args.distractors} names of absent objects;",
        "2. **interactive visual prompt**: a box on one object of the scene (the kind with the most copies) -- find more like it;",
        "3. **generic visual prompt**: a box on the same kind of object in another scene (`exemplars/` when from val) -- find it here;",
        "4. **mixed**: that object's name and the exemplar box as one category.",
        "",
        "## Text prompts: what the pictures show",
        "",
        (f"Protocol: each scene searched for the names of its objects plus {args.distractors} absent names; "
         f"a detection counts at score >= {args.threshold} (the boxes drawn) and IoU >= 0.5 with an object of its name."),
        "",
        f"- {text_totals(rows, args.threshold)}.",
        f"- {_measured_line(_model_card(model_dir))}.",
        "",
        ("The demo's protocol is easier than the measured one (a handful of candidate names per scene, not 1,177), "
         "and the measured AP50 ranks every detection whatever its score, so the two numbers answer different questions."),
    ]
    lines += ["", "## Per scene", "",
              f"found = objects hit by a detection of their name scoring >= {args.threshold} at IoU >= 0.5.", "",
              "| scene | objects | text found | box here | box elsewhere | mixed |", "|---|---:|---|---|---|---|"]
    lines += [(f"| [{r['scene']}]({Path(r['scene']).stem}.png) | {r['objects']} | {r['text']} | "
               f"{r.get('interactive', '-')} | {r.get('generic', '-')} | {r.get('mixed', '-')} |") for r in rows]
    lines += ["", ("Try your own prompts in the web UI: `regionprompt serve` (http://127.0.0.1:8000), or "
                   "`regionprompt detect IMAGE --text \"...\" --out DIR`.")]
    return "\n".join(lines) + "\n"
