"""Dataset I/O: COCO instances JSON, YOLO folders, image-caption files, validation and conversion.

All boxes in memory are COCO ``(x, y, w, h)`` absolute pixels (see :mod:`regionprompt.data.model`).
Readers return a :class:`ReadResult` (``data`` + :class:`ValidationReport`); strict mode (the default)
raises :class:`regionprompt.errors.DatasetError` on any problem, ``skip_invalid=True`` drops bad items.
"""

from __future__ import annotations

from regionprompt.data.captions import CaptionDataset, CaptionedImage, read_captions, write_captions_jsonl, write_coco_captions
from regionprompt.data.coco import read_coco, to_coco_dict, write_coco
from regionprompt.data.convert import ConvertedSplit, DatasetFormat, convert_dataset, load_categories
from regionprompt.data.files import ImageMode, image_size
from regionprompt.data.model import Annotation, Category, DetectionDataset, ImageRecord
from regionprompt.data.validate import Problem, ProblemKind, ReadResult, ValidationReport
from regionprompt.data.yolo import YoloConfig, YoloExport, category_index, read_data_yaml, read_yolo, write_yolo

__all__ = [
    "Annotation",
    "CaptionDataset",
    "CaptionedImage",
    "Category",
    "ConvertedSplit",
    "DatasetFormat",
    "DetectionDataset",
    "ImageMode",
    "ImageRecord",
    "Problem",
    "ProblemKind",
    "ReadResult",
    "ValidationReport",
    "YoloConfig",
    "YoloExport",
    "category_index",
    "convert_dataset",
    "image_size",
    "load_categories",
    "read_captions",
    "read_coco",
    "read_data_yaml",
    "read_yolo",
    "to_coco_dict",
    "write_captions_jsonl",
    "write_coco",
    "write_coco_captions",
    "write_yolo",
]
