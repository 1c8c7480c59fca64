"""Convert detection datasets between COCO and YOLO on disk (what ``regionprompt convert`` runs).

Output layouts:

* COCO: ``OUT/annotations/instances_<split>.json`` and images in ``OUT/<split>/``;
* YOLO: ``OUT/data.yaml``, ``OUT/images/<split>/``, ``OUT/labels/<split>/`` (see :mod:`regionprompt.data.yolo`).

Images are hardlinked when possible, else copied (``images="copy"`` always copies, ``"none"`` writes
annotations only). Reading validates first; in strict mode any problem stops the conversion before
anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from regionprompt.data.coco import parse_coco, read_coco, write_coco
from regionprompt.data.files import ImageMode, place_image, read_json
from regionprompt.data.model import Category, DetectionDataset
from regionprompt.data.validate import ProblemKind, ReportBuilder, ValidationReport
from regionprompt.data.yolo import image_root_of, read_data_yaml, read_yolo, write_yolo
from regionprompt.errors import DatasetError
from regionprompt.logging_utils import get_logger, progress
from regionprompt.untrusted import check_path_name, safe_child

_log = get_logger("data")


class DatasetFormat(str, Enum):
    COCO = "coco"
    YOLO = "yolo"


@dataclass(frozen=True)
class SplitSource:
    """One split of a source dataset, read and validated.

    Attributes:
        split: split folder name (``val2017``).
        dataset: the records (boxes COCO xywh absolute pixels).
        image_dir: the folder the records' ``file_name`` s are relative to (``None`` if unknown).
        report: what reading found (and dropped, in ``skip_invalid`` mode).
    """

    split: str
    dataset: DetectionDataset
    image_dir: Path | None
    report: ValidationReport


@dataclass(frozen=True)
class ConvertedSplit:
    """One split written by :func:`convert_dataset`.

    Attributes:
        split: split folder name.
        path: the annotation file written (COCO JSON or ``data.yaml``).
        images, boxes, categories: counts written.
        crowd_skipped: ``iscrowd`` boxes left out (YOLO output only).
        report: validation report of the source split.
    """

    split: str
    path: Path
    images: int
    boxes: int
    categories: int
    crowd_skipped: int
    report: ValidationReport


def coco_split_name(json_path: Path) -> str:
    """``instances_val2017.json`` -> ``val2017``; other names -> the file stem."""
    stem = json_path.stem
    return stem[len("instances_") :] if stem.startswith("instances_") and len(stem) > len("instances_") else stem


def guess_coco_image_dir(json_path: Path, split: str) -> Path | None:
    """The usual places of a COCO split's images: ``ROOT/<split>`` next to ``ROOT/annotations/``, etc.,
    and ``images/`` beside the JSON (an EmojiWorld build: ``test/annotations.json`` + ``test/images/``).
    The JSON's own folder is not a guess (a split named like it would otherwise shadow ``images/``)."""
    base = json_path.resolve().parent
    for candidate in (base.parent / split, base / split, base / "images" / split, base.parent / "images" / split, base / "images"):
        if candidate.is_dir() and candidate != base:
            return candidate
    return None


def load_categories(path: str | os.PathLike) -> tuple[Category, ...]:
    """Categories from a COCO JSON file (its ``categories``) or a JSON list of category objects."""
    path = Path(path)
    builder = ReportBuilder(str(path))
    data = read_json(path, builder)
    if isinstance(data, list):
        data = {"images": [], "annotations": [], "categories": data}
    if not isinstance(data, dict) or "categories" not in data:
        raise builder.fatal(ProblemKind.MALFORMED_FILE, "expected a COCO file with 'categories' or a list of categories", file=str(path))
    dataset = parse_coco({"images": [], "annotations": [], **data}, builder, file=str(path))
    builder.finish()
    return dataset.categories


def read_source(
    src: str | os.PathLike,
    fmt: DatasetFormat | str,
    *,
    image_dir: str | os.PathLike | None = None,
    split: str | None = None,
    categories: Sequence[Category] | None = None,
    skip_invalid: bool = False,
) -> list[SplitSource]:
    """Read the split(s) to convert.

    COCO: ``src`` is the JSON file; ``split`` defaults to its name (``instances_val2017.json`` ->
    ``val2017``); images are looked for in ``image_dir`` or the usual places (:func:`guess_coco_image_dir`).
    YOLO: ``src`` is the folder or its ``data.yaml``; ``split`` defaults to every split in ``data.yaml``.
    """
    src = Path(src)
    fmt = DatasetFormat(fmt)
    if split is not None:  # a folder name, in the input and in the output
        check_path_name(split, what="split", single=True)
    if fmt == DatasetFormat.COCO:
        name = split or coco_split_name(src)
        images = Path(image_dir) if image_dir is not None else guess_coco_image_dir(src, name)
        result = read_coco(src, image_dir=images, skip_invalid=skip_invalid)
        return [SplitSource(name, result.data, images, result.report)]
    config = read_data_yaml(src)
    keys = [split] if split else config.distinct_splits()
    if not keys:
        raise DatasetError(f"{config.yaml_path}: no train/val/test split listed; pass a split name")
    out = []
    for key in keys:
        result = read_yolo(config.yaml_path, split=key, categories=categories, skip_invalid=skip_invalid)
        root = image_root_of(config, key)
        name = root.name if root != config.root else key
        out.append(SplitSource(name, result.data, root, result.report))
    return out


def _write_coco_split(source: SplitSource, out: Path, mode: ImageMode) -> ConvertedSplit:
    # The split (from --split or a data.yaml key) and file names come from input: keep them inside ``out``.
    split_dir = safe_child(out, source.split, what="split", single=True)
    for img in source.dataset.images:
        check_path_name(img.file_name, what=f"image {img.id} file_name")
    path = write_coco(source.dataset, out / "annotations" / f"instances_{source.split}.json")
    if mode != ImageMode.NONE and source.image_dir is not None:
        for img in progress(source.dataset.images, desc=f"placing {source.split} images", total=len(source.dataset.images), unit="img"):
            place_image(source.image_dir / img.file_name, split_dir / img.file_name, mode)
    ds = source.dataset
    return ConvertedSplit(source.split, path, len(ds.images), len(ds.annotations), len(ds.categories), 0, source.report)


def convert_dataset(
    src: str | os.PathLike,
    *,
    src_format: DatasetFormat | str,
    dst_format: DatasetFormat | str,
    out: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    split: str | None = None,
    images: ImageMode | str = ImageMode.LINK,
    categories: Sequence[Category] | None = None,
    skip_invalid: bool = False,
    include_crowd: bool = False,
) -> list[ConvertedSplit]:
    """Read ``src`` in ``src_format`` and write it to ``out`` in ``dst_format`` (split by split).

    Every split is read and validated before anything is written, so a strict-mode failure leaves
    ``out`` untouched. ``categories`` (YOLO input only) restores category ids by name, e.g. sparse
    COCO ids. See :func:`read_source` for ``split`` / ``image_dir`` defaults.

    Raises:
        DatasetError: unreadable input, problems in strict mode, or missing images.
    """
    mode = ImageMode(images)
    dst = DatasetFormat(dst_format)
    sources = read_source(src, src_format, image_dir=image_dir, split=split, categories=categories, skip_invalid=skip_invalid)
    out = Path(out)
    results = []
    for source in sources:
        if mode != ImageMode.NONE and source.image_dir is None:
            raise DatasetError(f"{src}: cannot find the images of split {source.split!r}; pass --images DIR (or --no-images)")
        if dst == DatasetFormat.COCO:
            results.append(_write_coco_split(source, out, mode))
            continue
        export = write_yolo(
            source.dataset, out, split=source.split, image_dir=source.image_dir, images=mode, include_crowd=include_crowd
        )
        results.append(
            ConvertedSplit(source.split, out / "data.yaml", export.images, export.boxes, len(source.dataset.categories), export.crowd_skipped, source.report)
        )
    return results
