"""Image-caption data: COCO captions JSON and JSON-lines <-> :class:`CaptionDataset`.

Accepted inputs:

* **COCO captions JSON** (``.json``): ``{"images": [{"id", "file_name", "width"?, "height"?, ...}],
  "annotations": [{"image_id", "caption", "id"?}, ...]}``. Other image fields and top-level keys
  (``info``, ``licenses``) are kept.
* **JSON lines** (``.jsonl``, one object per line, blank lines ignored): the image under
  ``"file_name"`` or ``"image"``, and either one ``"caption": str`` or several ``"captions": [str, ...]``.
  Lines naming the same image are merged in file order; other keys of the first line (``id``,
  ``width``, ``height`` ...) are kept for that image.

Captions are stripped of surrounding whitespace; empty captions are problems. Caption annotation ids
are not kept: writing COCO numbers captions 1..N in dataset order. Writing JSON lines gives one line
per image: ``{"file_name": ..., "captions": [...]}`` (plus ``id`` / ``width`` / ``height`` when known).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from regionprompt.data.files import atomic_write_text, dump_json, is_safe_relative, read_json
from regionprompt.untrusted import loads_json
from regionprompt.data.validate import ProblemKind, ReadResult, ReportBuilder, is_int
from regionprompt.errors import DatasetError

_IMAGE_KEYS = ("id", "file_name", "width", "height")


@dataclass(frozen=True)
class CaptionedImage:
    """One image and its captions.

    Attributes:
        file_name: image path relative to the dataset's image folder.
        captions: the captions, in file order.
        id: integer image id, when the source has one.
        width, height: size in pixels, when the source gives it.
        extra: other fields of the source image record, kept on write.
    """

    file_name: str
    captions: tuple[str, ...]
    id: int | None = None
    width: int | None = None
    height: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "captions", tuple(self.captions))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))


@dataclass(frozen=True)
class CaptionDataset:
    """Images with captions (image -> list of captions), in file order.

    Attributes:
        images: one entry per image (an image without captions is kept with ``captions=()``).
        extra: other top-level fields of a COCO captions file (``info``, ``licenses`` ...).
    """

    images: tuple[CaptionedImage, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def num_captions(self) -> int:
        return sum(len(img.captions) for img in self.images)

    def by_file_name(self) -> dict[str, tuple[str, ...]]:
        """``file_name`` -> captions."""
        return {img.file_name: img.captions for img in self.images}

    def pairs(self) -> Iterator[tuple[str, str]]:
        """``(file_name, caption)`` for every caption (the unit of image-text training)."""
        for img in self.images:
            for caption in img.captions:
                yield img.file_name, caption


def _clean_caption(value: Any, builder: ReportBuilder, where: dict[str, Any]) -> str | None:
    if not isinstance(value, str):
        builder.add(ProblemKind.WRONG_TYPE, f"caption must be a string, got {value!r:.80}", **where)
        return None
    text = value.strip()
    if not text:
        builder.add(ProblemKind.EMPTY_CAPTION, "caption is empty", **where)
        return None
    return text


def _parse_coco_captions(data: Any, builder: ReportBuilder, file: str) -> CaptionDataset:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise builder.fatal(ProblemKind.MALFORMED_FILE, "not a COCO captions file: needs 'images' and 'annotations' lists", file=file)
    images: dict[int, dict[str, Any]] = {}
    for index, record in enumerate(data["images"]):
        item = f"image {record.get('id', f'images[{index}]') if isinstance(record, dict) else f'images[{index}]'}"
        if not isinstance(record, dict) or not is_int(record.get("id")) or not isinstance(record.get("file_name"), str):
            builder.add(ProblemKind.WRONG_TYPE, "image needs an integer 'id' and a string 'file_name'", file=file, item=item)
            builder.drop("images")
            continue
        if not is_safe_relative(record["file_name"]):
            builder.add(ProblemKind.BAD_FILE_NAME, f"file_name {record['file_name']!r} must be a relative path", file=file, item=item)
            builder.drop("images")
            continue
        if record["id"] in images:
            builder.add(ProblemKind.DUPLICATE_ID, "image id used twice", file=file, item=item)
            builder.drop("images")
            continue
        images[record["id"]] = {"record": record, "captions": []}
    for index, ann in enumerate(data["annotations"]):
        item = f"caption {ann.get('id', f'annotations[{index}]') if isinstance(ann, dict) else f'annotations[{index}]'}"
        where = {"file": file, "item": item}
        if not isinstance(ann, dict) or "caption" not in ann or "image_id" not in ann:
            builder.add(ProblemKind.MISSING_FIELD, "caption annotation needs 'image_id' and 'caption'", **where)
            builder.drop("captions")
            continue
        entry = images.get(ann["image_id"]) if is_int(ann["image_id"]) else None
        if entry is None:
            builder.add(ProblemKind.UNKNOWN_IMAGE, f"refers to image id {ann['image_id']!r}, which is not in images", **where)
            builder.drop("captions")
            continue
        caption = _clean_caption(ann["caption"], builder, where)
        if caption is None:
            builder.drop("captions")
            continue
        entry["captions"].append(caption)
    out = []
    for entry in images.values():
        record = entry["record"]
        out.append(
            CaptionedImage(
                record["file_name"],
                entry["captions"],
                record["id"],
                record.get("width") if is_int(record.get("width")) else None,
                record.get("height") if is_int(record.get("height")) else None,
                {k: v for k, v in record.items() if k not in _IMAGE_KEYS},
            )
        )
    builder.checked("images", len(data["images"]))
    builder.checked("captions", len(data["annotations"]))
    return CaptionDataset(out, {k: v for k, v in data.items() if k not in ("images", "annotations")})


def _parse_jsonl(path: Path, builder: ReportBuilder) -> CaptionDataset:
    entries: dict[str, dict[str, Any]] = {}
    file = str(path)
    lines = captions_seen = 0
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise builder.fatal(ProblemKind.MALFORMED_FILE, f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=file)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        where = {"file": file, "line": line_no}
        try:
            record = loads_json(line)  # deep nesting / huge integers: a bad line, not a traceback
        except json.JSONDecodeError as exc:
            builder.add(ProblemKind.MALFORMED_FILE, f"invalid JSON: {exc.msg}", file=file, line=line_no, column=exc.colno)
            builder.drop("lines")
            continue
        if not isinstance(record, dict):
            builder.add(ProblemKind.WRONG_TYPE, f"line must be a JSON object, got {type(record).__name__}", **where)
            builder.drop("lines")
            continue
        name = record.get("file_name", record.get("image"))
        if not isinstance(name, str) or not name:
            builder.add(ProblemKind.MISSING_FIELD, "needs the image as a non-empty string 'file_name' or 'image'", **where)
            builder.drop("lines")
            continue
        if not is_safe_relative(name):
            builder.add(ProblemKind.BAD_FILE_NAME, f"image {name!r} must be a relative path", **where)
            builder.drop("lines")
            continue
        if "captions" in record:
            raw = record["captions"]
            if not isinstance(raw, list):
                builder.add(ProblemKind.WRONG_TYPE, f"'captions' must be a list of strings, got {raw!r:.80}", **where)
                builder.drop("lines")
                continue
        elif "caption" in record:
            raw = [record["caption"]]
        else:
            builder.add(ProblemKind.MISSING_FIELD, "needs 'caption' (a string) or 'captions' (a list of strings)", **where)
            builder.drop("lines")
            continue
        entry = entries.setdefault(name, {"record": record, "captions": []})
        for value in raw:
            captions_seen += 1
            caption = _clean_caption(value, builder, {**where, "item": f"image {name}"})
            if caption is None:
                builder.drop("captions")
            else:
                entry["captions"].append(caption)
    images = []
    for name, entry in entries.items():
        record = entry["record"]
        images.append(
            CaptionedImage(
                name,
                entry["captions"],
                record.get("id") if is_int(record.get("id")) else None,
                record.get("width") if is_int(record.get("width")) else None,
                record.get("height") if is_int(record.get("height")) else None,
                {k: v for k, v in record.items() if k not in (*_IMAGE_KEYS, "image", "caption", "captions")},
            )
        )
    builder.checked("lines", lines)
    builder.checked("captions", captions_seen)
    return CaptionDataset(images)


def read_captions(path: str | os.PathLike, *, skip_invalid: bool = False) -> ReadResult[CaptionDataset]:
    """Read captions from a COCO captions ``.json`` or a ``.jsonl`` file (see the module docstring).

    Raises:
        DatasetError: missing or malformed file (a JSON-lines file with bad lines is only fatal in
            strict mode), or any problem in strict mode.
    """
    path = Path(path)
    builder = ReportBuilder(str(path), skip_invalid=skip_invalid)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        if not path.is_file():
            raise DatasetError(f"{path}: file not found")
        data = _parse_jsonl(path, builder)
    else:
        data = _parse_coco_captions(read_json(path, builder), builder, str(path))
    return ReadResult(data, builder.finish())


def to_coco_captions_dict(dataset: CaptionDataset) -> dict[str, Any]:
    """COCO captions dict; images without an id get ids after the largest known one, in order."""
    next_id = max((img.id for img in dataset.images if img.id is not None), default=0) + 1
    images, annotations = [], []
    for img in dataset.images:
        image_id = img.id
        if image_id is None:
            image_id, next_id = next_id, next_id + 1
        record: dict[str, Any] = {"id": image_id, "file_name": img.file_name}
        if img.width is not None and img.height is not None:
            record.update(width=img.width, height=img.height)
        record.update((k, v) for k, v in img.extra.items() if k not in record)
        images.append(record)
        annotations.extend({"id": len(annotations) + 1, "image_id": image_id, "caption": c} for c in img.captions)
    head = {k: dataset.extra[k] for k in ("info", "licenses") if k in dataset.extra}
    out = {**head, "images": images, "annotations": annotations}
    out.update((k, v) for k, v in dataset.extra.items() if k not in out)
    return out


def write_coco_captions(dataset: CaptionDataset, path: str | os.PathLike, *, indent: int | None = None) -> Path:
    """Write a COCO captions JSON file (atomic, deterministic); returns the path."""
    path = Path(path)
    atomic_write_text(path, dump_json(to_coco_captions_dict(dataset), indent=indent))
    return path


def write_captions_jsonl(dataset: CaptionDataset, path: str | os.PathLike) -> Path:
    """Write one JSON line per image: ``{"file_name", "captions", "id"?, "width"?, "height"?, ...extra}``."""
    path = Path(path)
    lines = []
    for img in dataset.images:
        record: dict[str, Any] = {"file_name": img.file_name, "captions": list(img.captions)}
        for key in ("id", "width", "height"):
            if getattr(img, key) is not None:
                record[key] = getattr(img, key)
        record.update((k, v) for k, v in img.extra.items() if k not in record)
        lines.append(dump_json(record))
    atomic_write_text(path, "".join(lines))
    return path
