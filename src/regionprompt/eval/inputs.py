"""Load and validate the two inputs of a detection evaluation: COCO ground truth and COCO results.

Both are turned into *fresh* plain dicts, because the COCO API mutates what it is given (it adds
``ignore``, ``area``, ``id`` and ``segmentation`` keys) and callers must keep their objects intact.

Box format everywhere in this module: COCO ``[x, y, w, h]``, absolute pixels.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionprompt.errors import EvaluationError
from regionprompt.logging_utils import get_logger

_log = get_logger("eval")

SPLITS = ("base", "novel")
FREQUENCIES = ("r", "c", "f")
_FREQUENCY_ALIASES = {"r": "r", "rare": "r", "c": "c", "common": "c", "f": "f", "frequent": "f"}


@dataclass(frozen=True)
class GroundTruth:
    """Validated COCO ground truth, ready for the COCO API.

    ``dataset`` is a new dict (images, annotations, categories); annotation ids are renumbered
    1..N because the evaluator uses id 0 as its "unmatched" marker. ``splits`` / ``frequencies`` map
    category id to ``"base"``/``"novel"`` and ``"r"``/``"c"``/``"f"`` for categories that carry the
    field. ``source`` names where it came from, for messages.
    """

    dataset: dict[str, Any]
    splits: dict[int, str]
    frequencies: dict[int, str]
    source: str

    @property
    def image_ids(self) -> set[int]:
        return {img["id"] for img in self.dataset["images"]}

    @property
    def category_ids(self) -> set[int]:
        return {cat["id"] for cat in self.dataset["categories"]}


@dataclass(frozen=True)
class Predictions:
    """Validated COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh absolute, ``score``).

    ``dropped`` counts predictions removed by ``skip_invalid`` per reason (e.g. ``"unknown image_id"``).
    """

    results: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = "predictions"


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read {what} file {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            f"{what} file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def _as_int_id(value: Any, where: str) -> int:
    # JSON writers sometimes emit ids as floats (3.0) or strings ("3"); accept exact integers only.
    if isinstance(value, bool):
        raise EvaluationError(f"{where}: id must be an integer, got {value!r}")
    # numbers.Integral/Real also admit numpy scalars, common when results come from arrays.
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise EvaluationError(f"{where}: id must be an integer, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _parse_box(bbox: Any) -> list[float] | str:
    """``bbox`` as 4 floats ``[x, y, w, h]``, or the reason it is not a usable box."""
    if hasattr(bbox, "tolist") and not isinstance(bbox, (list, tuple)):
        bbox = bbox.tolist()  # numpy array / torch tensor rows
    if not isinstance(bbox, Sequence) or isinstance(bbox, str) or len(bbox) != 4:
        return "bbox is not a list of 4 numbers"
    if not all(_is_number(v) for v in bbox):
        return "bbox is not a list of 4 numbers"
    box = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in box):
        return "bbox has NaN/inf"
    if box[2] < 0 or box[3] < 0:
        return "bbox has negative width/height"
    return box


def _normalise_frequency(value: Any, where: str) -> str:
    key = str(value).strip().lower()
    if key not in _FREQUENCY_ALIASES:
        raise EvaluationError(f"{where}: frequency must be one of r/c/f (rare/common/frequent), got {value!r}")
    return _FREQUENCY_ALIASES[key]


def load_ground_truth(gt: str | Path | Mapping[str, Any]) -> GroundTruth:
    """Read and validate COCO instances ground truth from a path or an already-loaded dict.

    Categories may carry ``split`` (``base``/``novel``) and ``frequency`` (``r``/``c``/``f`` or the
    spelled-out words). Raises :class:`EvaluationError` naming the file and the offending entry.
    """
    if isinstance(gt, (str, Path)):
        source = str(gt)
        data = _read_json(Path(gt), "ground-truth")
    elif isinstance(gt, Mapping):
        source, data = "ground-truth dict", gt
    else:
        raise EvaluationError(f"ground truth must be a path or a COCO dict, got {type(gt).__name__}")
    if not isinstance(data, Mapping):
        raise EvaluationError(f"{source}: expected a COCO JSON object, got a JSON {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationError(f"{source}: missing or non-list '{key}' (not a COCO instances file?)")

    images = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, Mapping) or "id" not in img:
            raise EvaluationError(f"{source}: images[{i}] has no 'id'")
        images.append({**img, "id": _as_int_id(img["id"], f"{source}: images[{i}]")})
    if not images:
        raise EvaluationError(f"{source}: ground truth has no images; nothing to evaluate")
    image_ids = {img["id"] for img in images}
    if len(image_ids) != len(images):
        raise EvaluationError(f"{source}: duplicate image ids")

    categories, splits, frequencies = [], {}, {}
    for i, cat in enumerate(data["categories"]):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, Mapping) or "id" not in cat:
            raise EvaluationError(f"{where} has no 'id'")
        cid = _as_int_id(cat["id"], where)
        name = str(cat.get("name", cid))
        if cat.get("split") is not None:
            split = str(cat["split"]).strip().lower()
            if split not in SPLITS:
                raise EvaluationError(f"{where} ({name!r}): split must be 'base' or 'novel', got {cat['split']!r}")
            splits[cid] = split
        if cat.get("frequency") is not None:
            frequencies[cid] = _normalise_frequency(cat["frequency"], f"{where} ({name!r})")
        categories.append({**cat, "id": cid, "name": name})
    category_ids = {cat["id"] for cat in categories}
    if len(category_ids) != len(categories):
        raise EvaluationError(f"{source}: duplicate category ids")

    annotations = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, Mapping) or not {"image_id", "category_id", "bbox"} <= ann.keys():
            raise EvaluationError(f"{where} lacks image_id, category_id or bbox")
        image_id = _as_int_id(ann["image_id"], where)
        category_id = _as_int_id(ann["category_id"], where)
        if image_id not in image_ids:
            raise EvaluationError(f"{where}: image_id {image_id} is not in 'images'")
        if category_id not in category_ids:
            raise EvaluationError(f"{where}: category_id {category_id} is not in 'categories'")
        bbox = _parse_box(ann["bbox"])
        if isinstance(bbox, str):
            raise EvaluationError(f"{where}: {bbox}: {ann['bbox']!r}")
        area = ann.get("area")
        # COCO's size buckets (APs/APm/APl) use 'area'; boxes-only datasets leave it out.
        area = float(area) if _is_number(area) and math.isfinite(area) else bbox[2] * bbox[3]
        annotations.append({
            "id": len(annotations) + 1,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": bbox,
            "area": area,
            "iscrowd": int(bool(ann.get("iscrowd", 0))),
        })
    if not annotations:
        raise EvaluationError(f"{source}: ground truth has no annotations; AP is undefined")

    dataset = {"images": images, "annotations": annotations, "categories": categories}
    return GroundTruth(dataset=dataset, splits=splits, frequencies=frequencies, source=source)


def _remap_dataset(data: Mapping[str, Any], gt: GroundTruth, source: str) -> list[dict[str, Any]]:
    """Annotations of a scored COCO dataset re-keyed to ``gt``'s image ids (by file name, else base name)
    and category ids (by name). Raises when an image or category of the dataset has no match."""
    def base(name: str) -> str:
        return Path(str(name)).name

    by_file = {str(img["file_name"]): img["id"] for img in gt.dataset["images"]}
    by_base = {base(img["file_name"]): img["id"] for img in gt.dataset["images"]}
    by_name = {str(cat["name"]): cat["id"] for cat in gt.dataset["categories"]}
    images, categories = {}, {}
    for img in data["images"]:
        name = str(img.get("file_name", ""))
        found = by_file.get(name, by_base.get(base(name)))
        if found is None:
            raise EvaluationError(f"{source}: image {name!r} is not in the ground truth {gt.source}")
        images[img["id"]] = found
    for cat in data["categories"]:
        found = by_name.get(str(cat.get("name")))
        if found is None:
            raise EvaluationError(f"{source}: category {cat.get('name')!r} is not in the ground truth {gt.source}")
        categories[cat["id"]] = found
    out = []
    for ann in data["annotations"]:
        if "score" not in ann:
            raise EvaluationError(f"{source}: annotation {ann.get('id')!r} has no score (a labelled dataset needs scores)")
        out.append({**ann, "image_id": images.get(ann.get("image_id"), -1),
                    "category_id": categories.get(ann.get("category_id"), -1)})
    return out


def load_predictions(
    predictions: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    gt: GroundTruth,
    *,
    skip_invalid: bool = False,
) -> Predictions:
    """Read and validate COCO result dicts against ``gt``.

    Accepts a path to a JSON list (or to an object with an ``annotations`` list), or the list itself. A
    whole COCO dataset with scored annotations (``regionprompt label --format coco``) is matched to ``gt``
    by image file name and category name instead of by id.
    Each entry needs ``image_id``, ``category_id``, ``bbox`` (``[x, y, w, h]`` absolute pixels, finite,
    w, h >= 0) and a finite ``score``. Unknown image / category ids and bad boxes raise
    :class:`EvaluationError` with counts, unless ``skip_invalid`` is set: then they are dropped,
    counted in :attr:`Predictions.dropped` and logged as a warning.
    """
    if isinstance(predictions, (str, Path)):
        source = str(predictions)
        data = _read_json(Path(predictions), "predictions")
    else:
        source, data = "predictions", predictions
    if isinstance(data, Mapping):
        # A COCO-style file of detections: {"annotations": [...], ...}.
        if not isinstance(data.get("annotations"), list):
            raise EvaluationError(f"{source}: expected a JSON list of COCO result dicts")
        if isinstance(data.get("images"), list) and isinstance(data.get("categories"), list):
            # A whole dataset (e.g. `regionprompt label --format coco`): its ids are its own, so match images
            # by file name and categories by name; trusting the ids would silently score the wrong pairs.
            data = _remap_dataset(data, gt, source)
        else:
            data = data["annotations"]
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise EvaluationError(f"{source}: expected a JSON list of COCO result dicts, got {type(data).__name__}")

    image_ids, category_ids = gt.image_ids, gt.category_ids
    results: list[dict[str, Any]] = []
    problems: Counter[str] = Counter()
    examples: dict[str, str] = {}

    def reject(reason: str, index: int, detail: str) -> None:
        problems[reason] += 1
        examples.setdefault(reason, f"[{index}] {detail}")

    for i, det in enumerate(data):
        if not isinstance(det, Mapping) or not {"image_id", "category_id", "bbox", "score"} <= det.keys():
            # Structural errors are never skipped: they mean the file is not a results file at all.
            raise EvaluationError(f"{source}: entry [{i}] lacks image_id, category_id, bbox or score: {det!r:.200}")
        image_id = _as_int_id(det["image_id"], f"{source}: entry [{i}] image_id")
        category_id = _as_int_id(det["category_id"], f"{source}: entry [{i}] category_id")
        score = det["score"]
        if image_id not in image_ids:
            reject("unknown image_id", i, f"image_id={image_id}")
        elif category_id not in category_ids:
            reject("unknown category_id", i, f"category_id={category_id}")
        elif isinstance(box := _parse_box(det["bbox"]), str):
            reject(box, i, f"bbox={det['bbox']!r}")
        elif not _is_number(score) or not math.isfinite(score):
            reject("score is not a finite number", i, f"score={score!r}")
        else:
            results.append({
                "image_id": image_id,
                "category_id": category_id,
                "bbox": box,
                "score": float(score),
            })

    if problems:
        summary = "; ".join(f"{n} with {reason} (e.g. {examples[reason]})" for reason, n in sorted(problems.items()))
        if not skip_invalid:
            raise EvaluationError(
                f"{source}: {sum(problems.values())} of {len(data)} predictions do not fit the ground truth "
                f"({gt.source}): {summary}. Fix them or pass skip_invalid (--skip-invalid) to drop them."
            )
        _log.warning("dropped %d of %d predictions: %s", sum(problems.values()), len(data), summary)
    return Predictions(results=results, dropped=dict(sorted(problems.items())), source=source)
