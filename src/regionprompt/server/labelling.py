"""Labelling a folder of images by hand in the web UI: the folder, the accepted boxes, the exports.

The server is started on one folder (``regionprompt serve --images DIR``). A client names an image by
its ``/``-separated path relative to that folder, and the name is only ever *looked up* in the listing
the server made itself (:func:`regionprompt.autolabel.list_images`): a name not in it (``../x``, an
absolute path, a file added later) is refused, so no request reaches a file outside the folder.

Accepted boxes live in one JSON file, ``DIR/.regionprompt-labels/labels.json`` by default (``--labels``
names another), rewritten atomically after every change, so a reloaded page or a restarted server
finds them again and a crash never leaves half a file::

    {"format": "regionprompt-labels", "format_version": 1,
     "categories": ["taxi", "singer"],                     # first-use order: the export's category order
     "images": {"sub/a.png": {"width": 320, "height": 320, "boxes": [
         {"box": [x1, y1, x2, y2], "name": "taxi", "score": 0.87}]}}}   # xyxy pixels; score null when drawn

An image is part of the labelled set once it has an entry: a box was accepted on it, or it was marked
done with no box (an image with nothing to label). Export writes that set with the dataset writers:
COCO (``annotations.json``, file names relative to ``DIR``) or YOLO (``data.yaml``, ``labels/train``,
images hard-linked or copied into ``images/train``), under ``DIR/.regionprompt-labels/export/<format>``.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionprompt.autolabel import list_images
from regionprompt.data.coco import write_coco
from regionprompt.data.files import atomic_write_text, dump_json, image_size
from regionprompt.data.model import Annotation, Category, DetectionDataset, ImageRecord
from regionprompt.data.yolo import write_yolo
from regionprompt.errors import DatasetError, PromptError, RegionPromptError
from regionprompt.untrusted import loads_json

STATE_DIR = ".regionprompt-labels"
LABELS_FILE = "labels.json"
EXPORT_DIR = "export"
FORMAT = "regionprompt-labels"
FORMAT_VERSION = 1
EXPORT_FORMATS = ("coco", "yolo")
YOLO_SPLIT = "train"


class UnknownImageError(RegionPromptError):
    """A requested image is not one of the served folder's images (HTTP 404)."""


class NoFolderError(RegionPromptError):
    """The server was started without an image folder (HTTP 404)."""


@dataclass(frozen=True)
class LabelBox:
    """One accepted box.

    Attributes:
        box: ``(x1, y1, x2, y2)`` absolute pixels, inside the image.
        name: its category name.
        score: the detector's score when it came from a detection; ``None`` when drawn or edited by hand.
    """

    box: tuple[float, float, float, float]
    name: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in self.box], "name": self.name,
                "score": None if self.score is None else round(self.score, 5)}


def check_label_box(box: Sequence[float], name: str, score: float | None, wh: tuple[int, int], *,
                    max_name_length: int) -> LabelBox:
    """A :class:`LabelBox` from client values: 4 finite numbers, clipped to the ``(width, height)`` image,
    a non-empty size after clipping, a non-empty name.

    Raises:
        PromptError: anything else, with a message naming the value.
    """
    if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        raise PromptError(f"a box is 4 finite numbers [x1, y1, x2, y2], got {list(box)!r:.100}")
    width, height = wh
    # A box dragged a little past the border means "up to the border"; every export needs it inside.
    x1, x2 = (min(max(float(v), 0.0), float(width)) for v in (box[0], box[2]))
    y1, y2 = (min(max(float(v), 0.0), float(height)) for v in (box[1], box[3]))
    if not (x2 - x1 >= 1 and y2 - y1 >= 1):
        raise PromptError(f"box {list(box)!r:.100} is empty inside the {width}x{height} image (x1 < x2, y1 < y2 needed)")
    name = " ".join(str(name).split())
    if not name:
        raise PromptError("a label needs a non-empty name")
    if len(name) > max_name_length:
        raise PromptError(f"label name is longer than {max_name_length} characters")
    if score is not None and not (isinstance(score, (int, float)) and math.isfinite(score) and 0 <= score <= 1):
        raise PromptError(f"score must be a number in [0, 1] or null, got {score!r:.40}")
    return LabelBox((x1, y1, x2, y2), name, None if score is None else float(score))


@dataclass(frozen=True)
class ExportResult:
    """What :meth:`LabelStore.export` wrote: the folder, its main file, and the counts."""

    format: str
    folder: Path
    main_file: Path
    images: int
    annotations: int
    categories: tuple[str, ...]


class LabelStore:
    """The served image folder and its accepted labels (module docstring). Thread-safe: the server's
    request threads share one store, and each change is one locked read-modify-write of the file.

    Args:
        folder: the image folder.
        labels_file: where labels are kept (default ``folder/.regionprompt-labels/labels.json``).
        max_name_length: longest label name accepted.
    Raises:
        RegionPromptError: ``folder`` is not a folder, or ``labels_file`` is not a labels file.
    """

    def __init__(self, folder: str | Path, labels_file: str | Path | None = None, *, max_name_length: int = 200) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise RegionPromptError(f"{folder}: not a folder of images (--images)")
        self.state_dir = self.folder / STATE_DIR
        self.labels_file = Path(labels_file) if labels_file is not None else self.state_dir / LABELS_FILE
        self.export_root = self.labels_file.parent / EXPORT_DIR
        self.max_name_length = max_name_length
        self._lock = threading.Lock()
        self._files: list[str] = []
        self._known: frozenset[str] = frozenset()  # the listing, for lookups
        self._sizes: dict[str, tuple[int, int]] = {}
        self._categories: list[str] = []
        self._images: dict[str, dict[str, Any]] = {}
        self._load()
        self.rescan()

    # ---- the folder ------------------------------------------------------------------------------

    def rescan(self) -> list[str]:
        """List the folder again (images added since start appear); returns the file names."""
        files = list_images(self.folder, exclude=self.state_dir)
        if self.export_root.resolve().is_relative_to(self.folder):
            # --labels inside the folder: its exports (YOLO links the images) are not images to label.
            files = [f for f in files if not (self.folder / f).resolve().is_relative_to(self.export_root.resolve())]
        with self._lock:
            self._files, self._known = files, frozenset(files)
        return files

    @property
    def files(self) -> list[str]:
        return list(self._files)

    @property
    def categories(self) -> list[str]:
        """Every label name used so far, in first-use order."""
        with self._lock:
            return list(self._categories)

    def path_of(self, name: str) -> Path:
        """The file of image ``name``, found by lookup in the listing, never by joining the name to a path.

        Raises:
            UnknownImageError: ``name`` is not one of the folder's images.
        """
        if not isinstance(name, str) or name not in self._known:
            raise UnknownImageError(f"{str(name)[:200]!r} is not an image of the served folder")
        return self.folder / name  # a name of the server's own listing: a relative path inside the folder

    def size_of(self, name: str) -> tuple[int, int]:
        """``(width, height)`` as displayed (EXIF orientation applied), read from the header once."""
        path = self.path_of(name)
        if name not in self._sizes:
            try:
                self._sizes[name] = image_size(path)
            except DatasetError as exc:
                raise RegionPromptError(f"{name}: {exc}") from None
        return self._sizes[name]

    # ---- labels ----------------------------------------------------------------------------------

    def _load(self) -> None:
        if not self.labels_file.is_file():
            return
        try:
            data = loads_json(self.labels_file.read_bytes())
        except (json.JSONDecodeError, OSError) as exc:
            raise RegionPromptError(f"{self.labels_file}: not a labels file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RegionPromptError(f"{self.labels_file}: not a RegionPrompt labels file (format {FORMAT!r} expected)")
        if data.get("format_version") != FORMAT_VERSION:
            raise RegionPromptError(f"{self.labels_file}: labels format version {data.get('format_version')!r} "
                                    f"is not {FORMAT_VERSION}; upgrade RegionPrompt")
        images, categories = data.get("images"), data.get("categories")
        if not isinstance(images, dict) or not isinstance(categories, list):
            raise RegionPromptError(f"{self.labels_file}: 'images' must be an object and 'categories' a list")
        self._categories = [str(c) for c in categories]
        for name, entry in images.items():
            try:
                wh = (int(entry["width"]), int(entry["height"]))
                boxes = [check_label_box(b["box"], b["name"], b.get("score"), wh, max_name_length=self.max_name_length)
                         for b in entry["boxes"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise RegionPromptError(f"{self.labels_file}: image {name!r}: malformed entry ({exc})") from None
            self._images[name] = {"width": wh[0], "height": wh[1], "boxes": boxes}

    def _save(self) -> None:
        """Rewrite the labels file atomically (called with the lock held)."""
        images = {name: {"width": e["width"], "height": e["height"], "boxes": [b.to_dict() for b in e["boxes"]]}
                  for name, e in sorted(self._images.items())}
        atomic_write_text(self.labels_file, dump_json(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "categories": self._categories, "images": images},
            indent=1))

    def labels(self, name: str) -> dict[str, Any]:
        """Image ``name``'s entry: ``{"file", "width", "height", "done", "boxes": [LabelBox.to_dict()...]}``."""
        width, height = self.size_of(name)
        with self._lock:
            entry = self._images.get(name)
            boxes = [b.to_dict() for b in entry["boxes"]] if entry else []
        return {"file": name, "width": width, "height": height, "done": entry is not None, "boxes": boxes}

    def summary(self) -> list[dict[str, Any]]:
        """One row per image of the folder: ``{"file", "done", "boxes"}`` (boxes accepted so far)."""
        with self._lock:
            return [{"file": f, "done": f in self._images, "boxes": len(self._images.get(f, {}).get("boxes", ()))}
                    for f in self._files]

    def _change(self, name: str, change: Any) -> dict[str, Any]:
        """Apply ``change(boxes) -> boxes`` to image ``name`` under the lock, save, return the new entry."""
        wh = self.size_of(name)
        with self._lock:
            entry = self._images.get(name) or {"width": wh[0], "height": wh[1], "boxes": []}
            boxes = change(list(entry["boxes"]), wh)
            self._images[name] = {**entry, "boxes": boxes}
            for box in boxes:
                if box.name not in self._categories:
                    self._categories.append(box.name)
            self._save()
        return self.labels(name)

    def _checked(self, items: Iterable[dict[str, Any]], wh: tuple[int, int]) -> list[LabelBox]:
        return [check_label_box(i["box"], i["name"], i.get("score"), wh, max_name_length=self.max_name_length)
                for i in items]

    def accept(self, name: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Add boxes (``{"box", "name", "score"?}``) to image ``name``; an empty list marks it done."""
        return self._change(name, lambda boxes, wh: boxes + self._checked(items, wh))

    def replace(self, name: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Set image ``name``'s boxes to exactly ``items`` (the image is then done, even with none)."""
        return self._change(name, lambda boxes, wh: self._checked(items, wh))

    def _at(self, boxes: list[LabelBox], index: int) -> int:
        if not 0 <= index < len(boxes):
            raise UnknownImageError(f"no box {index} on this image (it has {len(boxes)})")
        return index

    def relabel(self, name: str, index: int, new_name: str) -> dict[str, Any]:
        """Give box ``index`` of image ``name`` another category name."""

        def change(boxes: list[LabelBox], wh: tuple[int, int]) -> list[LabelBox]:
            old = boxes[self._at(boxes, index)]
            boxes[index] = check_label_box(old.box, new_name, old.score, wh, max_name_length=self.max_name_length)
            return boxes

        return self._change(name, change)

    def delete(self, name: str, index: int) -> dict[str, Any]:
        """Remove box ``index`` of image ``name`` (the image stays done)."""

        def change(boxes: list[LabelBox], _wh: tuple[int, int]) -> list[LabelBox]:
            del boxes[self._at(boxes, index)]
            return boxes

        return self._change(name, change)

    def forget(self, name: str) -> dict[str, Any]:
        """Drop image ``name``'s entry: not done, no boxes, left out of exports."""
        self.path_of(name)
        with self._lock:
            if self._images.pop(name, None) is not None:
                self._save()
        return self.labels(name)

    # ---- export ----------------------------------------------------------------------------------

    def dataset(self) -> DetectionDataset:
        """The done images (sorted by file, ids 1..N) and their boxes as a dataset: categories are the
        names in use, in first-use order, ids 1..K; boxes COCO xywh pixels."""
        with self._lock:
            entries = {f: self._images[f] for f in sorted(self._images) if f in self._known}
            used = {b.name for e in entries.values() for b in e["boxes"]}
            names = [c for c in self._categories if c in used]
        ids = {name: i + 1 for i, name in enumerate(names)}
        images, annotations = [], []
        for image_id, (file, entry) in enumerate(entries.items(), 1):
            images.append(ImageRecord(image_id, file, entry["width"], entry["height"]))
            for box in entry["boxes"]:
                x1, y1, x2, y2 = box.box
                bbox = (round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2))
                annotations.append(Annotation(len(annotations) + 1, image_id, ids[box.name], bbox,
                                              round(bbox[2] * bbox[3], 2)))
        categories = tuple(Category(ids[n], n) for n in names)
        info = {"description": f"labelled by hand in the RegionPrompt web UI ({self.folder.name})"}
        return DetectionDataset(tuple(images), tuple(annotations), categories, extra={"info": info})

    def export(self, fmt: str) -> ExportResult:
        """Write the labelled set as ``fmt`` (``"coco"`` or ``"yolo"``) under ``export/<fmt>``, replacing
        the previous export whole: it is written into a temporary folder first and swapped in.

        Raises:
            RegionPromptError: an unknown format, or nothing labelled yet.
        """
        if fmt not in EXPORT_FORMATS:
            raise PromptError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        dataset = self.dataset()
        if not dataset.images:
            raise PromptError("nothing to export yet: accept boxes on an image (or mark it done) first")
        self.export_root.mkdir(parents=True, exist_ok=True)
        target = self.export_root / fmt
        staging = Path(tempfile.mkdtemp(prefix=f".{fmt}.", dir=self.export_root))
        try:
            if fmt == "coco":
                main = write_coco(dataset, staging / "annotations.json", indent=1)
            else:
                write_yolo(dataset, staging, split=YOLO_SPLIT, image_dir=self.folder, images="link")
                main = staging / "data.yaml"
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{fmt}.old.", dir=self.export_root))
                target.rename(old / fmt)
            staging.rename(target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ExportResult(fmt, target, target / main.name, len(dataset.images), len(dataset.annotations),
                            tuple(c.name for c in dataset.categories))

    def export_zip(self, fmt: str) -> bytes:
        """The last export of ``fmt`` as zip bytes (folder ``<fmt>/`` inside).

        Raises:
            RegionPromptError: no export of that format yet.
        """
        if fmt not in EXPORT_FORMATS:
            raise PromptError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        folder = self.export_root / fmt
        if not folder.is_dir():
            raise UnknownImageError(f"no {fmt} export yet: export first (POST /label/export)")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, f"{fmt}/{path.relative_to(folder).as_posix()}")
        return buffer.getvalue()
