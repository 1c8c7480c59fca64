"""The inputs of a detector evaluation: a COCO build on disk, exemplars drawn from it, and a resume log.

* :func:`load_eval_set` reads COCO ground truth (an EmojiWorld build: ``annotations.json`` + ``images/``)
  into :class:`EvalSet`: per image its file and its boxes (xyxy pixels) with category ids, plus the
  COCO dict restricted to the evaluated images, ready for
  :func:`~regionprompt.eval.coco_eval.evaluate_detections`.
* :func:`pick_exemplars` chooses exemplar boxes per category (one box from each of up to K images),
  seeded per category so that a category's exemplars do not depend on which other categories are asked.
* :class:`ResultLog` is an append-only JSONL of finished work units (an image, or an image of one trial),
  so that a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regionprompt.data.files import atomic_write_text
from regionprompt.errors import EvaluationError
from regionprompt.eval.inputs import load_ground_truth
from regionprompt.logging_utils import get_logger

LOG = get_logger("eval.detector")


@dataclass(frozen=True)
class EvalImage:
    """One evaluated image.

    Attributes:
        id: COCO image id.
        path: the image file.
        wh: ``(width, height)`` from the ground truth.
        boxes: ``(G, 4)`` float32 xyxy absolute pixels of its non-crowd boxes.
        category_ids: ``(G,)`` COCO category id of each box.
    """

    id: int
    path: Path
    wh: tuple[int, int]
    boxes: torch.Tensor
    category_ids: tuple[int, ...]

    def boxes_of(self, category_id: int) -> torch.Tensor:
        """``(g, 4)`` xyxy boxes of one category."""
        index = [i for i, c in enumerate(self.category_ids) if c == category_id]
        return self.boxes[index].reshape(-1, 4)


@dataclass(frozen=True)
class EvalSet:
    """Ground truth and images of an evaluation.

    Attributes:
        gt: COCO instances dict restricted to ``images`` (all categories kept).
        images: the evaluated images, in the file's order.
        names: category id -> name (unique).
        splits: category id -> ``"base"`` / ``"novel"`` where given.
        frequencies: category id -> ``"r"`` / ``"c"`` / ``"f"`` where given.
        source: where it was read from.
    """

    gt: dict[str, Any]
    images: tuple[EvalImage, ...]
    names: dict[int, str]
    splits: dict[int, str]
    frequencies: dict[int, str]
    source: str

    @property
    def category_ids(self) -> list[int]:
        return sorted(self.names)

    def ids_by_name(self) -> dict[str, int]:
        return {name: cid for cid, name in self.names.items()}

    def present_category_ids(self) -> list[int]:
        """Categories with at least one non-crowd box in the evaluated images, by id."""
        return sorted({c for image in self.images for c in image.category_ids})

    def restricted(self, images: Iterable[int] | None = None, categories: Iterable[int] | None = None) -> dict[str, Any]:
        """The COCO dict on a subset of image ids and/or category ids (annotations follow both)."""
        keep_images = set(images) if images is not None else {im["id"] for im in self.gt["images"]}
        keep_categories = set(categories) if categories is not None else set(self.names)
        return {
            **self.gt,
            "images": [im for im in self.gt["images"] if im["id"] in keep_images],
            "annotations": [a for a in self.gt["annotations"]
                            if a["image_id"] in keep_images and a["category_id"] in keep_categories],
            "categories": [c for c in self.gt["categories"] if c["id"] in keep_categories],
        }


def find_annotations(path: str | os.PathLike) -> Path:
    """A COCO JSON path, or a build folder holding ``annotations.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "annotations.json"
    if not path.is_file():
        raise EvaluationError(f"ground truth not found: {path} (give a COCO JSON or a build folder with annotations.json)")
    return path


def _image_root(gt_path: Path, image_root: Path | None, first_name: str) -> Path:
    if image_root is not None:
        return image_root
    for candidate in (gt_path.parent, gt_path.parent / "images"):
        if (candidate / first_name).is_file():
            return candidate
    raise EvaluationError(f"cannot find image {first_name!r} of {gt_path} in {gt_path.parent} or "
                          f"{gt_path.parent / 'images'}; pass the image folder")


def load_eval_set(gt: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                  max_images: int | None = None) -> EvalSet:
    """Read a COCO ground truth for a detector evaluation.

    Args:
        gt: COCO instances JSON, or a build folder holding ``annotations.json``.
        image_root: folder the images' ``file_name`` are relative to (default: the JSON's folder or
            its ``images/`` subfolder, as EmojiWorld builds lay them out).
        max_images: evaluate only the first N images of the file.
    Raises:
        EvaluationError: a missing or malformed file, duplicate category names, a missing image.
    """
    if max_images is not None and max_images < 1:
        raise EvaluationError(f"max_images must be >= 1, got {max_images}")
    path = find_annotations(gt)
    truth = load_ground_truth(path)
    dataset = truth.dataset
    images = dataset["images"][:max_images] if max_images else dataset["images"]
    names: dict[int, str] = {}
    seen: dict[str, int] = {}
    for category in dataset["categories"]:
        name = " ".join(str(category["name"]).split())
        if name in seen:
            raise EvaluationError(f"{path}: categories {seen[name]} and {category['id']} share the name {name!r}; "
                                  "detections are matched to categories by name")
        seen[name] = category["id"]
        names[category["id"]] = name
    for image in images:
        if "file_name" not in image:
            raise EvaluationError(f"{path}: image {image['id']} has no file_name")
    root = _image_root(path, Path(image_root) if image_root is not None else None, str(images[0]["file_name"]))
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for ann in dataset["annotations"]:
        if ann["image_id"] in by_image and not ann["iscrowd"]:
            by_image[ann["image_id"]].append(ann)
    records = []
    for image in images:
        anns = by_image[image["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        file = root / image["file_name"]
        if not file.is_file():
            raise EvaluationError(f"{path}: image file {file} is missing")
        wh = (int(image.get("width", 0)), int(image.get("height", 0)))
        records.append(EvalImage(image["id"], file, wh, xyxy, tuple(a["category_id"] for a in anns)))
    keep = {im["id"] for im in images}
    restricted = {**dataset, "images": list(images), "annotations": [a for a in dataset["annotations"] if a["image_id"] in keep]}
    return EvalSet(restricted, tuple(records), names, dict(truth.splits), dict(truth.frequencies), str(path))


@dataclass(frozen=True)
class Exemplar:
    """An exemplar box ``(x1, y1, x2, y2)`` in pixels of the image at ``path``."""

    path: Path
    box: tuple[float, float, float, float]

    def prompt(self, label: str) -> dict[str, Any]:
        """The mapping :meth:`~regionprompt.api.Detector.make_concepts` takes as a box."""
        return {"box": self.box, "label": label, "image": str(self.path)}


def _valid(box: Sequence[float]) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def pick_exemplars(source: EvalSet, names: Iterable[str], *, images_per_category: int, seed: int) -> dict[str, list[Exemplar]]:
    """Up to ``images_per_category`` exemplars per category name: one random box from each of that many
    random images of ``source`` containing it. Categories ``source`` lacks get no entry.

    Categories are matched by name (builds of one world share ids, other datasets may not).
    """
    if images_per_category < 1:
        raise EvaluationError(f"exemplar images per category must be >= 1, got {images_per_category}")
    ids = source.ids_by_name()
    holders: dict[int, list[EvalImage]] = {}
    for image in source.images:
        for cid in dict.fromkeys(image.category_ids):
            holders.setdefault(cid, []).append(image)
    out: dict[str, list[Exemplar]] = {}
    for name in names:
        cid = ids.get(name)
        if cid is None or cid not in holders:
            continue
        # One generator per category: its exemplars do not change when the vocabulary does.
        rng = random.Random(f"{seed}:{name}")
        chosen = []
        for image in rng.sample(holders[cid], len(holders[cid])):
            boxes = [tuple(float(v) for v in b) for b in image.boxes_of(cid).tolist()]
            boxes = [b for b in boxes if _valid(b)]
            if boxes:
                chosen.append(Exemplar(image.path, rng.choice(boxes)))
            if len(chosen) == images_per_category:
                break
        if chosen:
            out[name] = chosen
    return out


def settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class ResultLog:
    """Append-only JSONL of finished units: a header line ``{"settings": digest}``, then one
    ``{"key": ..., "value": ...}`` per unit. Reopened with the same settings it returns what is done; with
    other settings (or without a path) it starts empty. A line cut short by a kill is dropped on reopen.
    """

    def __init__(self, path: str | os.PathLike | None, settings: Mapping[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.digest = settings_digest(settings)
        self.done: dict[str, Any] = {}
        if self.path is None:
            return
        header = json.dumps({"settings": self.digest})
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        if lines and lines[0] == header:
            valid = [header]
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    self.done[str(entry["key"])] = entry["value"]
                    valid.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
            if len(valid) != len(lines):
                atomic_write_text(self.path, "\n".join(valid) + "\n")
            LOG.info("resuming: %d finished units in %s", len(self.done), self.path)
        else:
            if lines:
                LOG.info("%s holds another evaluation's progress; starting over", self.path)
            atomic_write_text(self.path, header + "\n")

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def get(self, key: str) -> Any:
        return self.done[key]

    def put(self, key: str, value: Any) -> None:
        self.done[key] = value
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "value": value}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


__all__ = ["EvalImage", "EvalSet", "Exemplar", "ResultLog", "find_annotations", "load_eval_set", "pick_exemplars",
           "settings_digest"]
