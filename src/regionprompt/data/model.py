"""The in-memory detection dataset: images, box annotations and categories.

Box format: every :attr:`Annotation.bbox` is COCO ``(x, y, w, h)`` -- top-left corner and size in
absolute pixels of the image as stored in :class:`ImageRecord` (``width`` x ``height``), kept as
Python floats so that a COCO file read and written again keeps its exact numbers. Use
:meth:`DetectionDataset.boxes` to get :class:`regionprompt.boxes.Boxes` for model code.

Fields a format carries beyond the ones modelled here (``segmentation``, ``coco_url``, a category's
``split`` = ``"base"``/``"novel"``, ``frequency`` = ``"f"``/``"c"``/``"r"``, ``synonyms`` ...) are kept in
``extra`` and written back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from regionprompt.errors import BoxFormatError

if TYPE_CHECKING:
    from regionprompt.boxes import Boxes

XYWH = tuple[float, float, float, float]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    Attributes:
        id: integer image id (unique in the dataset).
        file_name: path relative to the dataset's image directory (``/`` separated).
        width, height: size in pixels (after EXIF orientation when read from image files).
        extra: other fields of the source record (e.g. ``coco_url``, ``license``), kept on write.
    """

    id: int
    file_name: str
    width: int
    height: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))


@dataclass(frozen=True)
class Annotation:
    """One box annotation.

    Attributes:
        id: integer annotation id (unique in the dataset).
        image_id: id of the :class:`ImageRecord` it belongs to.
        category_id: id of its :class:`Category` (sparse ids allowed, as in COCO: 1..90).
        bbox: ``(x, y, w, h)`` top-left corner and size, absolute pixels.
        area: object area in pixels^2 (the COCO ``area``: the segment's area when there is one,
            else ``w * h``).
        iscrowd: COCO crowd flag (a box around a group of objects; ignored by COCO evaluation).
        extra: other fields (``segmentation``, ``attributes`` ...), kept on write.
    """

    id: int
    image_id: int
    category_id: int
    bbox: XYWH
    area: float
    iscrowd: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bbox = tuple(float(v) for v in self.bbox)
        if len(bbox) != 4:
            raise BoxFormatError(f"annotation {self.id}: bbox must be (x, y, w, h), got {self.bbox!r}")
        object.__setattr__(self, "bbox", bbox)
        object.__setattr__(self, "extra", _frozen(self.extra))

    @property
    def xyxy(self) -> XYWH:
        """``(x1, y1, x2, y2)`` corners, absolute pixels."""
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


@dataclass(frozen=True)
class Category:
    """One object category.

    Attributes:
        id: integer category id (COCO ids are sparse; YOLO class indices are derived from the order
            of ids, see :func:`regionprompt.data.yolo.category_index`).
        name: unique name; the key that maps categories between formats.
        supercategory: coarser group name (``""`` when absent).
        extra: other fields, e.g. ``split`` (``"base"``/``"novel"``), ``frequency`` (``"f"``/``"c"``/``"r"``),
            ``synonyms`` (list of str); kept on write.
    """

    id: int
    name: str
    supercategory: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))


@dataclass(frozen=True)
class DetectionDataset:
    """Images, box annotations and categories, in file order.

    Attributes:
        images, annotations, categories: the records (ids unique once validated).
        extra: other top-level fields of the source file (COCO ``info``, ``licenses`` ...), kept on write.
    """

    images: tuple[ImageRecord, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    categories: tuple[Category, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "annotations", tuple(self.annotations))
        object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "extra", _frozen(self.extra))

    def image_by_id(self) -> dict[int, ImageRecord]:
        return {img.id: img for img in self.images}

    def category_by_id(self) -> dict[int, Category]:
        return {cat.id: cat for cat in self.categories}

    def annotations_by_image(self) -> dict[int, list[Annotation]]:
        """Image id -> its annotations in file order (every image present, possibly with ``[]``)."""
        out: dict[int, list[Annotation]] = {img.id: [] for img in self.images}
        for ann in self.annotations:
            out.setdefault(ann.image_id, []).append(ann)
        return out

    def sorted_categories(self) -> tuple[Category, ...]:
        """Categories by increasing id: the order that defines contiguous (YOLO) class indices."""
        return tuple(sorted(self.categories, key=lambda c: c.id))

    def boxes(self, image_id: int) -> Boxes:
        """The boxes of one image as :class:`regionprompt.boxes.Boxes` (``(N, 4)`` xywh absolute pixels)."""
        from regionprompt.boxes import BoxFormat, Boxes

        img = self.image_by_id()[image_id]
        data = [ann.bbox for ann in self.annotations if ann.image_id == image_id]
        return Boxes(data, BoxFormat.XYWH, normalized=False, image_wh=(img.width, img.height))
