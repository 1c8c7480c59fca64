"""What is wrong with a dataset: problems by kind, with counts, examples and what was dropped.

Readers (:mod:`regionprompt.data.coco`, :mod:`~regionprompt.data.yolo`, :mod:`~regionprompt.data.captions`)
collect problems in a :class:`ReportBuilder` while they parse, then call :meth:`ReportBuilder.finish`:

* strict mode (the default) raises :class:`~regionprompt.errors.DatasetError` whose message summarises
  the report (the first problems of each kind, with file names, ids and line numbers);
* ``skip_invalid=True`` returns the report; the reader has dropped the bad items (or clipped boxes
  that reach outside their image) and :attr:`ValidationReport.dropped` counts them.

:func:`check_detection_dataset` holds the checks shared by COCO and YOLO once records are typed:
duplicate ids, annotations pointing to unknown images or categories, zero-area boxes and boxes outside
their image (box format: COCO ``[x, y, w, h]`` absolute pixels).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Generic, TypeVar

from regionprompt.data.model import Annotation, Category, DetectionDataset, ImageRecord
from regionprompt.errors import DatasetError

T = TypeVar("T")

BOX_TOLERANCE_PX = 1.0
"""Boxes may reach this far (pixels) beyond the image before they count as outside it."""

MAX_EXAMPLES_PER_KIND = 20
"""Examples kept per problem kind; counts are always exact."""


class ProblemKind(str, Enum):
    """Kinds of problems a dataset can have (the value is what reports print)."""

    MALFORMED_FILE = "malformed file"  # JSON / YAML syntax error, or not the expected top-level structure
    MISSING_FIELD = "missing field"
    WRONG_TYPE = "wrong field type"
    DUPLICATE_ID = "duplicate id"
    DUPLICATE_NAME = "duplicate category name"
    UNKNOWN_IMAGE = "unknown image id"
    UNKNOWN_CATEGORY = "unknown category id"
    MISSING_IMAGE = "missing image file"
    UNREADABLE_IMAGE = "unreadable image"
    SIZE_MISMATCH = "image size mismatch"
    BAD_FILE_NAME = "unsafe file name"
    ZERO_AREA = "zero or negative area box"
    BOX_OUTSIDE = "box outside image"
    YOLO_COLUMNS = "YOLO line with wrong column count"
    YOLO_NOT_NUMERIC = "YOLO line with non-numeric value"
    YOLO_OUT_OF_RANGE = "YOLO coordinate outside [0, 1]"
    UNKNOWN_CLASS = "unknown YOLO class index"
    EMPTY_CAPTION = "empty caption"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        kind: what is wrong.
        message: a sentence a user can act on.
        file: the file it was found in (dataset file, label file or image).
        item: the item concerned, e.g. ``"annotation 17"`` or ``"image 397133"``.
        line: 1-based line number in ``file``, where known.
        column: 1-based column number, where known (JSON syntax errors).
    """

    kind: ProblemKind
    message: str
    file: str | None = None
    item: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        parts = [p for p in (where, self.item) if p]
        return f"{' '.join(parts)}: {self.message}" if parts else self.message


@dataclass(frozen=True)
class ValidationReport:
    """Problems found in a dataset, by kind.

    Attributes:
        source: the dataset checked (a file or directory).
        counts: number of problems of each kind (exact).
        examples: the first problems of each kind (at most :data:`MAX_EXAMPLES_PER_KIND` each), in
            the order they were found.
        dropped: items removed in ``skip_invalid`` mode, by item type (``"annotations"``,
            ``"images"``, ``"categories"``, ``"label lines"``, ``"captions"``).
        clipped: boxes clipped to their image in ``skip_invalid`` mode (kept, not dropped).
        checked: items that were checked, by item type (for the summary line).
    """

    source: str
    counts: dict[ProblemKind, int] = field(default_factory=dict)
    examples: dict[ProblemKind, tuple[Problem, ...]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    clipped: int = 0
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """``True`` when no problem was found."""
        return not self.counts

    @property
    def num_problems(self) -> int:
        return sum(self.counts.values())

    def problems(self) -> list[Problem]:
        """All kept examples, kind by kind."""
        return [p for kind in self.counts for p in self.examples.get(kind, ())]

    def summary(self, max_examples: int = 3) -> str:
        """A multi-line human-readable summary: counts per kind, the first examples, what was dropped."""
        checked = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        head = f"{self.source}: " + (f"checked {checked}; " if checked else "")
        if self.ok:
            return head + "no problems found"
        lines = [head + f"{self.num_problems} problem(s)"]
        for kind, count in self.counts.items():
            lines.append(f"  {kind.value}: {count}")
            for problem in self.examples.get(kind, ())[:max_examples]:
                lines.append(f"    - {problem}")
            if count > max_examples:
                lines.append(f"    ... and {count - min(max_examples, len(self.examples.get(kind, ())))} more")
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{n} {what}" for what, n in self.dropped.items()))
        if self.clipped:
            lines.append(f"  clipped to the image: {self.clipped} box(es)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``regionprompt dataset check --json``)."""
        return {
            "source": self.source,
            "ok": self.ok,
            "counts": {k.value: v for k, v in self.counts.items()},
            "examples": {
                k.value: [
                    {"message": p.message, "file": p.file, "item": p.item, "line": p.line, "column": p.column}
                    for p in examples
                ]
                for k, examples in self.examples.items()
            },
            "dropped": dict(self.dropped),
            "clipped": self.clipped,
            "checked": dict(self.checked),
        }


class ReportBuilder:
    """Collects problems while a reader parses; mutable, turned into a :class:`ValidationReport` at the end."""

    def __init__(self, source: str, *, skip_invalid: bool = False) -> None:
        self.source = source
        self.skip_invalid = skip_invalid
        self._counts: Counter[ProblemKind] = Counter()
        self._examples: dict[ProblemKind, list[Problem]] = {}
        self._dropped: Counter[str] = Counter()
        self._checked: dict[str, int] = {}
        self.clipped = 0

    def add(
        self,
        kind: ProblemKind,
        message: str,
        *,
        file: str | None = None,
        item: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self._counts[kind] += 1
        examples = self._examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES_PER_KIND:
            examples.append(Problem(kind, message, file, item, line, column))

    def drop(self, what: str, count: int = 1) -> None:
        if count:
            self._dropped[what] += count

    def checked(self, what: str, count: int) -> None:
        self._checked[what] = count

    @property
    def has_problems(self) -> bool:
        return bool(self._counts)

    def report(self) -> ValidationReport:
        return ValidationReport(
            source=self.source,
            counts=dict(self._counts),
            examples={k: tuple(v) for k, v in self._examples.items()},
            dropped=dict(self._dropped),
            clipped=self.clipped,
            checked=dict(self._checked),
        )

    def finish(self) -> ValidationReport:
        """The report; in strict mode, raise :class:`DatasetError` if anything was found."""
        report = self.report()
        if not report.ok and not self.skip_invalid:
            raise DatasetError(report.summary() + "\n(use skip_invalid / --skip-invalid to drop bad items and go on)")
        return report

    def fatal(self, kind: ProblemKind, message: str, **where: Any) -> DatasetError:
        """Record a problem that stops reading (nothing to skip to) and return the error to raise."""
        self.add(kind, message, **where)
        # One line naming the file (and line/column): the CLI prints it as its ``error:`` line.
        return DatasetError(str(Problem(kind, f"{message} ({kind.value})", **where)))


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON ``true`` must not pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clip_xywh(bbox: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1 = min(max(bbox[0], 0.0), width), min(max(bbox[1], 0.0), height)
    x2, y2 = min(max(bbox[0] + bbox[2], 0.0), width), min(max(bbox[1] + bbox[3], 0.0), height)
    return (x1, y1, x2 - x1, y2 - y1)


def box_is_outside(bbox: tuple[float, float, float, float], width: int, height: int) -> bool:
    """``bbox`` (xywh absolute) reaches beyond ``[0, width] x [0, height]`` by more than the tolerance."""
    x, y, w, h = bbox
    t = BOX_TOLERANCE_PX
    return x < -t or y < -t or x + w > width + t or y + h > height + t


def check_detection_dataset(dataset: DetectionDataset, builder: ReportBuilder, *, file: str | None = None) -> DetectionDataset:
    """Semantic checks shared by all detection formats; returns the dataset without the bad items.

    Checks: duplicate image / category / annotation ids (the first one wins), duplicate category
    names (they would make the YOLO name mapping ambiguous), annotations for unknown image or
    category ids, zero or negative width/height, boxes beyond the image by more than
    :data:`BOX_TOLERANCE_PX` (clipped in ``skip_invalid`` mode; dropped if nothing is left).
    Problems go to ``builder``; in strict mode the returned dataset is only meaningful if
    ``builder`` stays clean.
    """
    categories: list[Category] = []
    category_ids: set[int] = set()
    names: set[str] = set()
    for cat in dataset.categories:
        if cat.id in category_ids:
            builder.add(ProblemKind.DUPLICATE_ID, "category id used twice", file=file, item=f"category {cat.id}")
            builder.drop("categories")
            continue
        if cat.name in names:
            builder.add(
                ProblemKind.DUPLICATE_NAME, f"category name {cat.name!r} used twice", file=file, item=f"category {cat.id}"
            )
            builder.drop("categories")
            continue
        category_ids.add(cat.id)
        names.add(cat.name)
        categories.append(cat)

    images: list[ImageRecord] = []
    image_by_id: dict[int, ImageRecord] = {}
    for img in dataset.images:
        if img.id in image_by_id:
            builder.add(ProblemKind.DUPLICATE_ID, f"image id used twice ({img.file_name})", file=file, item=f"image {img.id}")
            builder.drop("images")
            continue
        image_by_id[img.id] = img
        images.append(img)

    annotations: list[Annotation] = []
    annotation_ids: set[int] = set()
    for ann in dataset.annotations:
        item = f"annotation {ann.id}"
        if ann.id in annotation_ids:
            builder.add(ProblemKind.DUPLICATE_ID, "annotation id used twice", file=file, item=item)
            builder.drop("annotations")
            continue
        annotation_ids.add(ann.id)
        img = image_by_id.get(ann.image_id)
        if img is None:
            builder.add(ProblemKind.UNKNOWN_IMAGE, f"refers to image id {ann.image_id}, which is not in images", file=file, item=item)
            builder.drop("annotations")
            continue
        where = f"{item} (image {img.id} {img.file_name})"
        if ann.category_id not in category_ids:
            builder.add(
                ProblemKind.UNKNOWN_CATEGORY, f"refers to category id {ann.category_id}, which is not in categories", file=file, item=where
            )
            builder.drop("annotations")
            continue
        x, y, w, h = ann.bbox
        if w <= 0 or h <= 0:
            builder.add(ProblemKind.ZERO_AREA, f"box [x, y, w, h] = {list(ann.bbox)} has no area", file=file, item=where)
            builder.drop("annotations")
            continue
        if box_is_outside(ann.bbox, img.width, img.height):
            builder.add(
                ProblemKind.BOX_OUTSIDE,
                f"box [x, y, w, h] = {list(ann.bbox)} reaches outside the {img.width}x{img.height} image",
                file=file,
                item=where,
            )
            clipped = _clip_xywh(ann.bbox, img.width, img.height)
            if clipped[2] <= 0 or clipped[3] <= 0:
                builder.drop("annotations")
                continue
            builder.clipped += 1
            ann = replace(ann, bbox=clipped, area=min(ann.area, clipped[2] * clipped[3]))
        annotations.append(ann)
    builder.checked("images", len(dataset.images))
    builder.checked("annotations", len(dataset.annotations))
    builder.checked("categories", len(dataset.categories))
    return replace(dataset, images=tuple(images), annotations=tuple(annotations), categories=tuple(categories))


@dataclass(frozen=True)
class ReadResult(Generic[T]):
    """What a reader returns: the data (without bad items in ``skip_invalid`` mode) and the report."""

    data: T
    report: ValidationReport
