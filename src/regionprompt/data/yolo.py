"""YOLO detection datasets <-> :class:`~regionprompt.data.model.DetectionDataset`.

Layout (as Ultralytics uses it)::

    ROOT/data.yaml              path: .   train: images/train   val: images/val   names: {0: person, ...}
    ROOT/images/<split>/a.jpg
    ROOT/labels/<split>/a.txt   one box per line: "class cx cy w h"

Box format in label files: ``cx cy w h`` = centre and size normalised by the image width (x, w) and
height (y, h), in ``[0, 1]``; ``class`` = contiguous index into ``names``. In memory boxes are COCO
``(x, y, w, h)`` absolute pixels; image sizes come from the image files' headers (EXIF orientation
applied, as the image loader does), so no pixel is decoded.

Ids: YOLO has class *indices* ``0..K-1``; COCO category ids are often sparse (1..90). Writing orders
categories by id and numbers them 0..K-1 (:func:`category_index`); ``data.yaml`` also gets a
``coco_categories`` list (ids and extra fields such as ``split`` / ``frequency``), which reading uses to
restore the original ids. Without it, categories are matched by name against ``categories=`` when
given, else numbered ``index + 1``. Image ids are the file stems when all stems are distinct integers
(COCO file names such as ``000000397133.jpg``), else 1..N in file-name order.

YOLO has no crowd flag: ``iscrowd`` boxes are left out when writing unless ``include_crowd=True``.
``path`` in ``data.yaml`` is resolved relative to the YAML file; split entries must be image folders
(lists of folders are accepted; ``.txt`` image lists are not supported).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from regionprompt.data.files import IMAGE_SUFFIXES, ImageMode, atomic_write_text, image_size, place_image
from regionprompt.data.model import Annotation, Category, DetectionDataset, ImageRecord
from regionprompt.data.validate import ProblemKind, ReadResult, ReportBuilder, check_detection_dataset
from regionprompt.errors import DatasetError
from regionprompt.logging_utils import get_logger, progress
from regionprompt.untrusted import MAX_YAML_BYTES, UnsafePathError, check_path_name, load_yaml, safe_child

_log = get_logger("data")

DATA_YAML = "data.yaml"
SPLIT_KEYS = ("train", "val", "test")


@dataclass(frozen=True)
class YoloConfig:
    """The contents of ``data.yaml``.

    Attributes:
        yaml_path: the YAML file.
        root: the dataset root (``path`` resolved relative to the YAML file).
        names: class index -> name.
        splits: split key (``train``/``val``/``test``/...) -> image folders (absolute).
        categories: COCO categories aligned with ``names`` when the file carries ``coco_categories``.
        extra: the other keys of the file, kept when the file is rewritten.
    """

    yaml_path: Path
    root: Path
    names: dict[int, str]
    splits: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    categories: tuple[Category, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def distinct_splits(self) -> list[str]:
        """The split keys in order, less those naming the same folders as an earlier one (a ``val``
        that repeats ``train`` because the dataset has no validation split)."""
        seen: set[tuple[Path, ...]] = set()
        keys = []
        for key, dirs in self.splits.items():
            if tuple(dirs) not in seen:
                seen.add(tuple(dirs))
                keys.append(key)
        return keys

    def image_dirs(self, split: str) -> tuple[Path, ...]:
        """Image folders of ``split``: a key of ``data.yaml``, else a folder name under ``root/images``."""
        if split in self.splits:
            return self.splits[split]
        candidate = safe_child(self.root / "images", split, what="split", single=True)
        if candidate.is_dir():
            return (candidate,)
        known = ", ".join(sorted(self.splits)) or "none"
        raise DatasetError(f"{self.yaml_path}: no split {split!r} (splits in data.yaml: {known}; no folder {candidate})")


def category_index(categories: Sequence[Category]) -> dict[int, int]:
    """COCO category id -> contiguous YOLO class index, ordering categories by id."""
    return {cat.id: index for index, cat in enumerate(sorted(categories, key=lambda c: c.id))}


def split_key(split: str) -> str:
    """The ``data.yaml`` key for a split folder name: ``val2017`` -> ``val``, ``train`` -> ``train``."""
    for key in SPLIT_KEYS:
        if split.startswith(key):
            return key
    return split


def labels_dir_for(image_dir: Path) -> Path:
    """The label folder paired with an image folder: the last ``images`` path component becomes ``labels``."""
    parts = list(image_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    raise DatasetError(f"{image_dir}: image folder path has no 'images' component, so its label folder is unknown")


def _parse_names(raw: Any, yaml_path: Path) -> dict[int, str]:
    if isinstance(raw, list) and all(isinstance(n, str) and n for n in raw):
        names = dict(enumerate(raw))
    elif isinstance(raw, dict) and all(isinstance(k, int) and isinstance(v, str) and v for k, v in raw.items()):
        names = dict(sorted(raw.items()))
    else:
        raise DatasetError(f"{yaml_path}: 'names' must be a list of names or a mapping {{index: name}}, got {raw!r:.200}")
    if len(set(names.values())) != len(names):
        dupes = sorted(n for n, count in Counter(names.values()).items() if count > 1)[:10]
        raise DatasetError(f"{yaml_path}: duplicate class names {dupes}; names must be unique")
    if not names:
        raise DatasetError(f"{yaml_path}: 'names' is empty")
    return names


def _parse_coco_categories(raw: Any, names: dict[int, str], yaml_path: Path) -> tuple[Category, ...] | None:
    """Categories from the ``coco_categories`` key when it matches ``names`` exactly, else ``None``."""
    if raw is None:
        return None
    try:
        categories = tuple(
            Category(int(c["id"]), str(c["name"]), str(c.get("supercategory", "")), {k: v for k, v in c.items() if k not in ("id", "name", "supercategory")})
            for c in raw
        )
    except (TypeError, KeyError, ValueError, AttributeError):
        _log.warning("%s: ignoring malformed 'coco_categories'", yaml_path)
        return None
    if [c.name for c in categories] != [names[i] for i in sorted(names)] or len({c.id for c in categories}) != len(categories):
        _log.warning("%s: 'coco_categories' does not match 'names'; ignoring it", yaml_path)
        return None
    return categories


def read_data_yaml(path: str | os.PathLike) -> YoloConfig:
    """Read ``data.yaml`` (``path`` may be the file or the dataset folder holding it).

    Raises:
        DatasetError: missing file, YAML syntax error (with line and column), missing/invalid ``names``.
    """
    path = Path(path)
    yaml_path = path / DATA_YAML if path.is_dir() else path
    if not yaml_path.is_file():
        raise DatasetError(f"{yaml_path}: YOLO dataset config not found")
    if yaml_path.stat().st_size > MAX_YAML_BYTES:
        raise DatasetError(f"{yaml_path}: {yaml_path.stat().st_size:,} bytes is far too large for a data.yaml "
                           f"(the limit is {MAX_YAML_BYTES:,})")
    try:
        # Aliases bounded: a "billion laughs" file would otherwise expand when names are walked.
        data = load_yaml(yaml_path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise DatasetError(f"{yaml_path}{where}: invalid YAML: {exc.problem}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{yaml_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{yaml_path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{yaml_path}: expected a mapping with a 'names' key")
    names = _parse_names(data["names"], yaml_path)
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else (yaml_path.parent / root)
    splits: dict[str, tuple[Path, ...]] = {}
    for key in SPLIT_KEYS:
        value = data.get(key)
        if value is None:
            continue
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
            raise DatasetError(f"{yaml_path}: {key!r} must be a folder or a list of folders, got {value!r:.200}")
        splits[key] = tuple(root / e for e in entries)
    extra = {k: v for k, v in data.items() if k not in ("path", "names", "coco_categories", *SPLIT_KEYS)}
    categories = _parse_coco_categories(data.get("coco_categories"), names, yaml_path)
    return YoloConfig(yaml_path, root, names, splits, categories, extra)


def _list_images(image_dir: Path) -> list[Path]:
    return sorted(
        (p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(image_dir).as_posix(),
    )


def _image_ids(stems: Sequence[str]) -> list[int]:
    if stems and all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(stems) + 1))


def _resolve_categories(config: YoloConfig, categories: Sequence[Category] | None) -> dict[int, Category]:
    """Class index -> category, see the module docstring for the precedence."""
    if categories is not None:
        by_name = {c.name: c for c in categories}
        missing = [n for n in config.names.values() if n not in by_name]
        if missing:
            raise DatasetError(f"{config.yaml_path}: class names not among the given categories: {missing[:10]}")
        return {i: by_name[n] for i, n in config.names.items()}
    if config.categories is not None:
        return dict(zip(sorted(config.names), config.categories))
    return {i: Category(i + 1, n) for i, n in config.names.items()}


def _parse_label_line(
    text: str, classes: Mapping[int, Category], wh: tuple[int, int], builder: ReportBuilder, file: str, line: int
) -> tuple[int, tuple[float, float, float, float]] | None:
    """``(category id, (x, y, w, h) absolute pixels)`` for one label line, or ``None`` (problem reported)."""
    columns = text.split()
    if len(columns) != 5:
        hint = " (segment polygons are not supported)" if len(columns) > 5 else ""
        builder.add(ProblemKind.YOLO_COLUMNS, f"expected 5 columns 'class cx cy w h', got {len(columns)}{hint}", file=file, line=line)
        return None
    try:
        values = [float(c) for c in columns]
    except ValueError:
        builder.add(ProblemKind.YOLO_NOT_NUMERIC, f"non-numeric value in {text.strip()!r}", file=file, line=line)
        return None
    if not all(math.isfinite(v) for v in values):
        builder.add(ProblemKind.YOLO_NOT_NUMERIC, f"non-finite value in {text.strip()!r}", file=file, line=line)
        return None
    cls, cx, cy, w, h = values
    if not cls.is_integer() or int(cls) not in classes:
        builder.add(ProblemKind.UNKNOWN_CLASS, f"class {columns[0]} is not an index of 'names' (0..{max(classes)})", file=file, line=line)
        return None
    width, height = wh
    if w <= 0 or h <= 0:
        builder.add(ProblemKind.ZERO_AREA, f"box has no area (w={columns[3]}, h={columns[4]})", file=file, line=line)
        return None
    box = ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
    tol_x, tol_y = 1.0 / width, 1.0 / height  # the 1 px tolerance, in normalised units
    if not (-tol_x <= cx <= 1 + tol_x and -tol_y <= cy <= 1 + tol_y and w <= 1 + tol_x and h <= 1 + tol_y):
        builder.add(ProblemKind.YOLO_OUT_OF_RANGE, f"normalised values outside [0, 1] in {text.strip()!r}", file=file, line=line)
        x1, y1 = max(box[0], 0.0), max(box[1], 0.0)
        x2, y2 = min(box[0] + box[2], width), min(box[1] + box[3], height)
        if x2 <= x1 or y2 <= y1:
            return None
        builder.clipped += 1
        box = (x1, y1, x2 - x1, y2 - y1)
    return int(classes[int(cls)].id), box


def read_yolo(
    path: str | os.PathLike,
    *,
    split: str = "val",
    categories: Sequence[Category] | None = None,
    skip_invalid: bool = False,
) -> ReadResult[DetectionDataset]:
    """Read one split of a YOLO dataset.

    Args:
        path: the dataset folder holding ``data.yaml``, or the YAML file.
        split: a split key of ``data.yaml`` (``train``/``val``/``test``) or a folder under ``images/``.
        categories: target categories matched to YOLO names by name (to restore sparse COCO ids);
            default: ``coco_categories`` from ``data.yaml`` if present, else ids ``index + 1``.
        skip_invalid: drop bad label lines / images (clip boxes beyond the image) and return the report.

    Returns:
        ``ReadResult``; image ``file_name`` is relative to :func:`image_root_of` the split.

    Raises:
        DatasetError: bad ``data.yaml`` or split; in strict mode any problem in the labels or images.
    """
    config = read_data_yaml(path)
    builder = ReportBuilder(f"{config.yaml_path} [{split}]", skip_invalid=skip_invalid)
    classes = _resolve_categories(config, categories)
    image_root = image_root_of(config, split)
    files: list[tuple[Path, Path]] = []  # (image file, its label file)
    for image_dir in config.image_dirs(split):
        if not image_dir.is_dir():
            raise DatasetError(f"{config.yaml_path}: image folder {image_dir} of split {split!r} does not exist")
        labels_dir = labels_dir_for(image_dir)
        files.extend((f, labels_dir / f.relative_to(image_dir).with_suffix(".txt")) for f in _list_images(image_dir))
    try:
        rel_names = [f.relative_to(image_root).as_posix() for f, _ in files]
    except ValueError:
        raise DatasetError(f"{config.yaml_path}: the folders of split {split!r} must lie under the dataset root {image_root}") from None
    ids = _image_ids([Path(n).stem for n in rel_names])

    images: list[ImageRecord] = []
    annotations: list[Annotation] = []
    label_files_used: set[Path] = set()
    lines_read = 0
    for image_id, (file, label_file), name in progress(
        zip(ids, files, rel_names), desc=f"reading {split} labels", total=len(files), unit="img"
    ):
        label_files_used.add(label_file)
        try:
            wh = image_size(file)
        except DatasetError as exc:
            builder.add(ProblemKind.UNREADABLE_IMAGE, str(exc), file=str(file), item=f"image {image_id}")
            builder.drop("images")
            if label_file.is_file():
                builder.drop("label lines", sum(1 for t in _read_lines(label_file, builder) if t.strip()))
            continue
        images.append(ImageRecord(image_id, name, wh[0], wh[1]))
        if not label_file.is_file():
            continue  # an image without a label file is a background image
        for line_no, text in enumerate(_read_lines(label_file, builder), start=1):
            if not text.strip():
                continue
            lines_read += 1
            parsed = _parse_label_line(text, classes, wh, builder, str(label_file), line_no)
            if parsed is None:
                builder.drop("label lines")
                continue
            category_id, box = parsed
            annotations.append(Annotation(len(annotations) + 1, image_id, category_id, box, box[2] * box[3]))

    for image_dir in config.image_dirs(split):
        labels_dir = labels_dir_for(image_dir)
        if labels_dir.is_dir():
            for orphan in sorted(set(labels_dir.rglob("*.txt")) - label_files_used):
                builder.add(ProblemKind.MISSING_IMAGE, "label file has no image", file=str(orphan))
                builder.drop("label lines", sum(1 for t in _read_lines(orphan, builder) if t.strip()))

    used = sorted({c.id: c for c in classes.values()}.values(), key=lambda c: c.id)
    dataset = DetectionDataset(images, annotations, used, {})
    dataset = check_detection_dataset(dataset, builder, file=str(config.yaml_path))
    builder.checked("label lines", lines_read)
    report = builder.finish()
    return ReadResult(dataset, report)


def image_root_of(config: YoloConfig, split: str) -> Path:
    """The folder image ``file_name`` values of ``split`` are relative to: its image folder, or the
    dataset root when the split lists several folders."""
    dirs = config.image_dirs(split)
    return dirs[0] if len(dirs) == 1 else config.root


def _read_lines(path: Path, builder: ReportBuilder) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        builder.add(ProblemKind.MALFORMED_FILE, "label file is not UTF-8 text", file=str(path))
        return []


@dataclass(frozen=True)
class YoloExport:
    """What :func:`write_yolo` wrote.

    Attributes:
        root: dataset folder (holds ``data.yaml``).
        split: split folder name under ``images/`` and ``labels/``.
        images: label files written (one per image, empty for images without boxes).
        boxes: label lines written.
        crowd_skipped: ``iscrowd`` annotations left out (YOLO cannot mark them).
    """

    root: Path
    split: str
    images: int
    boxes: int
    crowd_skipped: int


def _format_line(index: int, bbox: tuple[float, float, float, float], width: int, height: int) -> str:
    # Clip first: boxes within the 1 px tolerance may poke out, YOLO coordinates must stay in [0, 1].
    x1, y1 = min(max(bbox[0], 0.0), width), min(max(bbox[1], 0.0), height)
    x2, y2 = min(max(bbox[0] + bbox[2], 0.0), width), min(max(bbox[1] + bbox[3], 0.0), height)
    cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
    return f"{index} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def _category_yaml(categories: Iterable[Category]) -> list[dict[str, Any]]:
    return [{"id": c.id, "name": c.name, "supercategory": c.supercategory, **dict(c.extra)} for c in categories]


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def write_data_yaml(root: Path, split: str, categories: Sequence[Category]) -> Path:
    """Create or update ``root/data.yaml`` with ``split`` -> ``images/<split>``; an existing file must
    have the same names (its other keys and splits are kept). Without a ``val`` split, ``val`` names the
    images of the first split written (Ultralytics requires the key)."""
    ordered = sorted(categories, key=lambda c: c.id)
    names = {i: c.name for i, c in enumerate(ordered)}
    yaml_path = root / DATA_YAML
    data: dict[str, Any] = {"path": "."}
    if yaml_path.is_file():
        existing = read_data_yaml(yaml_path)
        if existing.names != names:
            raise DatasetError(f"{yaml_path}: exists with different class names; write to an empty folder instead")
        for key, dirs in existing.splits.items():
            rel = [_relative_to(d, root) for d in dirs]
            data[key] = rel[0] if len(rel) == 1 else rel
        data.update(existing.extra)
    data[split_key(split)] = f"images/{split}"
    if "val" not in data:
        # Ultralytics requires `val`; with no validation split written, it names the same images as the
        # split that was (train first). Readers that list splits skip a repeated folder (`YoloConfig.distinct_splits`).
        data["val"] = next(data[k] for k in (*SPLIT_KEYS, split_key(split)) if k in data)
    data["names"] = names
    # Splits in a fixed order so that rewriting gives the same bytes whatever order splits were added in.
    ordered_data = {"path": data.pop("path")}
    ordered_data.update({k: data.pop(k) for k in SPLIT_KEYS if k in data})
    ordered_data.update(data)
    text = yaml.safe_dump(ordered_data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    # One category per line (flow style) keeps the file readable; Ultralytics ignores this key.
    text += "coco_categories:\n" + "".join(
        "- " + yaml.safe_dump(c, sort_keys=False, allow_unicode=True, default_flow_style=True, width=1 << 30).strip() + "\n"
        for c in _category_yaml(ordered)
    )
    atomic_write_text(yaml_path, text)
    return yaml_path


def write_yolo(
    dataset: DetectionDataset,
    root: str | os.PathLike,
    *,
    split: str,
    image_dir: str | os.PathLike | None = None,
    images: ImageMode | str = ImageMode.LINK,
    include_crowd: bool = False,
) -> YoloExport:
    """Write ``dataset`` as split ``split`` of a YOLO dataset under ``root``.

    Args:
        dataset: a validated dataset (boxes COCO xywh absolute pixels).
        root: output folder; ``data.yaml`` is created or extended with this split.
        split: folder name under ``images/`` and ``labels/`` (e.g. ``val2017``; its ``data.yaml`` key
            is ``val``).
        image_dir: where the dataset's ``file_name`` s are; needed unless ``images="none"``.
        images: ``link`` (hardlink, else copy), ``copy`` or ``none``.
        include_crowd: also write ``iscrowd`` boxes (as ordinary boxes).
    """
    root = Path(root)
    mode = ImageMode(images)
    # Split and file names come from input files and options: none may place a file outside ``root``.
    try:
        check_path_name(split, what="split", single=True)
        for img in dataset.images:
            check_path_name(img.file_name, what=f"image {img.id} file_name")
    except UnsafePathError as exc:
        raise DatasetError(str(exc)) from None
    if mode != ImageMode.NONE and image_dir is None:
        raise DatasetError("writing YOLO images needs image_dir (or images='none')")
    index = category_index(dataset.categories)
    by_image = dataset.annotations_by_image()
    labels_root = root / "labels" / split
    label_names = [Path(img.file_name).with_suffix(".txt").as_posix() for img in dataset.images]
    if len(set(label_names)) != len(label_names):
        clash = sorted(n for n in set(label_names) if label_names.count(n) > 1)[:5]
        raise DatasetError(f"images differing only in extension would share a YOLO label file: {clash}")
    boxes = crowd = 0
    for img in progress(dataset.images, desc=f"writing YOLO {split}", total=len(dataset.images), unit="img"):
        lines = []
        for ann in by_image.get(img.id, []):
            if ann.iscrowd and not include_crowd:
                crowd += 1
                continue
            lines.append(_format_line(index[ann.category_id], ann.bbox, img.width, img.height))
        label_path = labels_root / Path(img.file_name).with_suffix(".txt")
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        boxes += len(lines)
        if image_dir is not None:
            place_image(Path(image_dir) / img.file_name, root / "images" / split / img.file_name, mode)
    if mode == ImageMode.NONE:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    write_data_yaml(root, split, dataset.categories)
    if crowd:
        _log.info("left out %d iscrowd boxes (YOLO has no crowd flag; include_crowd=True keeps them)", crowd)
    return YoloExport(root, split, len(dataset.images), boxes, crowd)
