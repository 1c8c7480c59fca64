"""COCO instances JSON <-> :class:`~regionprompt.data.model.DetectionDataset`.

Box format in the file and in memory: ``bbox = [x, y, w, h]``, absolute pixels. Images: ``id``,
``file_name``, ``width``, ``height``; annotations: ``id``, ``image_id``, ``category_id``, ``bbox``,
optional ``area`` (default ``w * h``) and ``iscrowd`` (default 0); categories: ``id``, ``name``,
optional ``supercategory``. Every other field (``segmentation``, ``coco_url``, a category's ``split`` /
``frequency`` / ``synonyms``, top-level ``info`` / ``licenses`` ...) is kept and written back.

Writing is atomic (temporary file + ``os.replace``) and deterministic: modelled keys first in a fixed
order, then the extra keys in their original order; records in dataset order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from regionprompt.data.files import atomic_write_text, dump_json, image_size, is_safe_relative, read_json
from regionprompt.data.model import Annotation, Category, DetectionDataset, ImageRecord
from regionprompt.data.validate import (
    ProblemKind,
    ReadResult,
    ReportBuilder,
    check_detection_dataset,
    is_int,
    is_number,
)
from regionprompt.errors import DatasetError
from regionprompt.logging_utils import get_logger, progress

_log = get_logger("data")

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
_CATEGORY_KEYS = ("id", "name", "supercategory")
_TOP_KEYS = ("images", "annotations", "categories")


class _Fields:
    """Typed access to one JSON record; each bad field is reported once and makes the record invalid."""

    def __init__(self, record: Mapping[str, Any], builder: ReportBuilder, file: str, item: str) -> None:
        self.record, self.builder, self.file, self.item = record, builder, file, item
        self.valid = True

    @classmethod
    def of(cls, record: Any, key: str, index: int, builder: ReportBuilder, file: str) -> _Fields | None:
        """Fields of ``key[index]`` (e.g. ``images[3]``), or ``None`` (reported) if it is not a JSON object."""
        if not isinstance(record, dict):
            builder.add(ProblemKind.WRONG_TYPE, f"must be an object, got {type(record).__name__}", file=file, item=f"{key}[{index}]")
            return None
        label = {"images": "image", "annotations": "annotation", "categories": "category"}[key]
        return cls(record, builder, file, f"{label} {record.get('id', f'{key}[{index}]')}")

    def invalid(self, kind: ProblemKind, message: str) -> None:
        self.valid = False
        self.builder.add(kind, message, file=self.file, item=self.item)

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.record:
            if default is _REQUIRED:
                self.invalid(ProblemKind.MISSING_FIELD, f"has no {key!r}")
            return default
        return self.record[key]

    def integer(self, key: str, *, positive: bool = False, default: Any = None) -> Any:
        value = self._get(key, default)
        if value is _REQUIRED or value is default:
            return value
        if not is_int(value) or (positive and value <= 0):
            self.invalid(ProblemKind.WRONG_TYPE, f"{key!r} must be a {'positive ' if positive else ''}integer, got {value!r}")
        return value

    def string(self, key: str, *, nonempty: bool = False, default: Any = None) -> Any:
        value = self._get(key, default)
        if value is _REQUIRED or value is default:
            return value
        if not isinstance(value, str) or (nonempty and not value.strip()):
            self.invalid(ProblemKind.WRONG_TYPE, f"{key!r} must be a {'non-empty ' if nonempty else ''}string, got {value!r}")
        return value

    def number(self, key: str, default: Any = None) -> Any:
        value = self._get(key, default)
        if value is _REQUIRED or value is default:
            return value
        if not is_number(value):
            self.invalid(ProblemKind.WRONG_TYPE, f"{key!r} must be a finite number, got {value!r}")
        return value

    def bbox(self, key: str = "bbox") -> Any:
        value = self._get(key, _REQUIRED)
        if value is _REQUIRED:
            return value
        if not isinstance(value, list) or len(value) != 4 or not all(is_number(v) for v in value):
            self.invalid(ProblemKind.WRONG_TYPE, f"{key!r} must be a list of 4 finite numbers [x, y, w, h], got {value!r}")
        return value

    def extra(self, known: tuple[str, ...]) -> dict[str, Any]:
        return {k: v for k, v in self.record.items() if k not in known}


_REQUIRED: Any = object()


def _records(data: Mapping[str, Any], key: str, builder: ReportBuilder, file: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise builder.fatal(ProblemKind.MALFORMED_FILE, f"{key!r} must be a list, got {type(value).__name__}", file=file)
    return value


def _parse_image(record: Any, index: int, builder: ReportBuilder, file: str) -> ImageRecord | None:
    fields = _Fields.of(record, "images", index, builder, file)
    if fields is None:
        return None
    image_id = fields.integer("id", default=_REQUIRED)
    file_name = fields.string("file_name", nonempty=True, default=_REQUIRED)
    width = fields.integer("width", positive=True, default=_REQUIRED)
    height = fields.integer("height", positive=True, default=_REQUIRED)
    if fields.valid and not is_safe_relative(file_name):
        fields.invalid(ProblemKind.BAD_FILE_NAME, f"file_name {file_name!r} must be a relative path inside the image directory")
    if not fields.valid:
        return None
    return ImageRecord(image_id, file_name, width, height, fields.extra(_IMAGE_KEYS))


def _parse_annotation(record: Any, index: int, builder: ReportBuilder, file: str) -> Annotation | None:
    fields = _Fields.of(record, "annotations", index, builder, file)
    if fields is None:
        return None
    ann_id = fields.integer("id", default=_REQUIRED)
    image_id = fields.integer("image_id", default=_REQUIRED)
    category_id = fields.integer("category_id", default=_REQUIRED)
    bbox = fields.bbox()
    area = fields.number("area")
    iscrowd = record.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # 0/1 as COCO writes it; True/False compare equal and are accepted too
        fields.invalid(ProblemKind.WRONG_TYPE, f"'iscrowd' must be 0 or 1, got {iscrowd!r}")
    if not fields.valid:
        return None
    if area is None:
        area = bbox[2] * bbox[3]
    return Annotation(ann_id, image_id, category_id, tuple(bbox), float(area), bool(iscrowd), fields.extra(_ANNOTATION_KEYS))


def _parse_category(record: Any, index: int, builder: ReportBuilder, file: str) -> Category | None:
    fields = _Fields.of(record, "categories", index, builder, file)
    if fields is None:
        return None
    cat_id = fields.integer("id", default=_REQUIRED)
    name = fields.string("name", nonempty=True, default=_REQUIRED)
    supercategory = fields.string("supercategory", default="")
    if not fields.valid:
        return None
    return Category(cat_id, name, supercategory, fields.extra(_CATEGORY_KEYS))


def parse_coco(data: Any, builder: ReportBuilder, *, file: str = "<memory>") -> DetectionDataset:
    """Typed dataset from a parsed COCO instances dict; problems go to ``builder``, bad records are left out.

    Raises:
        DatasetError: ``data`` is not an object with ``images`` / ``annotations`` / ``categories`` lists.
    """
    if not isinstance(data, dict):
        raise builder.fatal(ProblemKind.MALFORMED_FILE, f"top level must be a JSON object, got {type(data).__name__}", file=file)
    missing = [key for key in _TOP_KEYS if key not in data]
    if missing:
        raise builder.fatal(
            ProblemKind.MALFORMED_FILE, f"not a COCO instances file: no {', '.join(map(repr, missing))} key", file=file
        )
    parsed: dict[str, list[Any]] = {}
    for key, parse in (("images", _parse_image), ("annotations", _parse_annotation), ("categories", _parse_category)):
        records = _records(data, key, builder, file)
        items = [parse(record, i, builder, file) for i, record in enumerate(records)]
        parsed[key] = [item for item in items if item is not None]
        builder.drop(key, len(records) - len(parsed[key]))
    extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
    return DetectionDataset(parsed["images"], parsed["annotations"], parsed["categories"], extra)


def check_image_files(
    dataset: DetectionDataset, image_dir: Path, builder: ReportBuilder, *, file: str | None = None
) -> DetectionDataset:
    """Check that every image exists under ``image_dir``, is readable (header only) and has the size
    the dataset says (either as stored or after EXIF rotation); drops failing images and their annotations."""
    bad: set[int] = set()
    for img in progress(dataset.images, desc="checking images", total=len(dataset.images), unit="img"):
        path = image_dir / img.file_name
        item = f"image {img.id}"
        if not path.is_file():
            builder.add(ProblemKind.MISSING_IMAGE, f"{img.file_name} not found in {image_dir}", file=file, item=item)
            bad.add(img.id)
            continue
        try:
            size = image_size(path)
        except DatasetError as exc:
            builder.add(ProblemKind.UNREADABLE_IMAGE, str(exc), file=str(path), item=item)
            bad.add(img.id)
            continue
        if (img.width, img.height) not in (size, size[::-1]):
            builder.add(
                ProblemKind.SIZE_MISMATCH,
                f"dataset says {img.width}x{img.height}, {img.file_name} is {size[0]}x{size[1]}",
                file=file,
                item=item,
            )
            bad.add(img.id)
    if not bad:
        return dataset
    annotations = tuple(a for a in dataset.annotations if a.image_id not in bad)
    builder.drop("images", len(bad))
    builder.drop("annotations", len(dataset.annotations) - len(annotations))
    images = tuple(img for img in dataset.images if img.id not in bad)
    return replace(dataset, images=images, annotations=annotations)


def read_coco(
    path: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    skip_invalid: bool = False,
) -> ReadResult[DetectionDataset]:
    """Read a COCO instances JSON file.

    Args:
        path: the JSON file.
        image_dir: when given, also check that every image file exists there, is readable and has
            the size given in the JSON.
        skip_invalid: drop bad records (clip boxes that reach outside their image) and return the
            report instead of raising.

    Returns:
        ``ReadResult`` with ``data`` (the dataset) and ``report``.

    Raises:
        DatasetError: the file is missing or malformed (even with ``skip_invalid``), or, in strict
            mode, any problem was found; the message lists the first problems of each kind.
    """
    path = Path(path)
    builder = ReportBuilder(str(path), skip_invalid=skip_invalid)
    dataset = parse_coco(read_json(path, builder), builder, file=str(path))
    dataset = check_detection_dataset(dataset, builder, file=str(path))
    if image_dir is not None:
        dataset = check_image_files(dataset, Path(image_dir), builder, file=str(path))
    report = builder.finish()
    _log.debug("read %s: %d images, %d annotations, %d categories", path, len(dataset.images), len(dataset.annotations), len(dataset.categories))
    return ReadResult(dataset, report)


def _ordered(known: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(known)
    out.update((k, v) for k, v in extra.items() if k not in known)
    return out


def _number(value: float) -> int | float:
    # Integral floats are written as ints (COCO files written by others mostly do the same).
    return int(value) if float(value).is_integer() else value


def to_coco_dict(dataset: DetectionDataset) -> dict[str, Any]:
    """The dataset as a COCO instances dict (key order as written by :func:`write_coco`)."""
    images = [
        _ordered({"id": i.id, "file_name": i.file_name, "width": i.width, "height": i.height}, i.extra) for i in dataset.images
    ]
    annotations = [
        _ordered(
            {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": a.category_id,
                "bbox": [_number(v) for v in a.bbox],
                "area": _number(a.area),
                "iscrowd": int(a.iscrowd),
            },
            a.extra,
        )
        for a in dataset.annotations
    ]
    categories = [_ordered({"id": c.id, "name": c.name, "supercategory": c.supercategory}, c.extra) for c in dataset.categories]
    head = {k: dataset.extra[k] for k in ("info", "licenses") if k in dataset.extra}
    body = {"images": images, "annotations": annotations, "categories": categories}
    return _ordered({**head, **body}, dataset.extra)


def write_coco(dataset: DetectionDataset, path: str | os.PathLike, *, indent: int | None = None) -> Path:
    """Write ``dataset`` as COCO instances JSON, atomically and deterministically; returns the path."""
    path = Path(path)
    atomic_write_text(path, dump_json(to_coco_dict(dataset), indent=indent))
    _log.debug("wrote %s", path)
    return path
