"""Detection results: a typed container per image.

Boxes are ``(N, 4)`` xyxy in absolute pixels of the searched image; ``labels[i]`` indexes
``names`` (and ``prompts`` when the detections came from prompts). Indexing with a mask, an index
tensor or a slice returns a new :class:`Detections` (detectron2's ``Instances`` habit).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.ops import batched_nms, clip_boxes_to_image, nms

from regionprompt.boxes import BoxFormat, as_box_tensor, convert_boxes
from regionprompt.errors import RegionPromptError
from regionprompt.prompts import PromptCategory

#: What Detections.save writes, by file suffix -> Pillow format.
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class Detections:
    """Detections on one image.

    Attributes:
        boxes: ``(N, 4)`` float32, xyxy, absolute pixels.
        scores: ``(N,)`` float32 confidences in ``[0, 1]``.
        labels: ``(N,)`` int64 indices into ``names``.
        names: the vocabulary (one name per prompt category).
        image_wh: ``(width, height)`` of the searched image.
        prompts: optional prompt categories parallel to ``names``: what each label was asked with.
        image_name: where the image came from (path or description).

    The names other detection libraries use read the same data: ``xyxy`` (= ``boxes``), ``xyxyn``
    (normalised by the image size), ``conf`` (= ``scores``), ``cls`` (= ``labels``); ``names`` stays a
    tuple (ultralytics has a dict; ``dict(enumerate(dets.names))`` gives one).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    names: tuple[str, ...]
    image_wh: tuple[int, int]
    prompts: tuple[PromptCategory, ...] | None = None
    image_name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        boxes = as_box_tensor(self.boxes, what="detection boxes")
        scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise RegionPromptError(
                f"detections need as many boxes, scores and labels; got {len(boxes)}, {len(scores)}, {len(labels)}"
            )
        names = tuple(self.names)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
            raise RegionPromptError(f"detection labels must index the {len(names)} names")
        if self.prompts is not None and len(self.prompts) != len(names):
            raise RegionPromptError("prompts must be parallel to names")
        width, height = int(self.image_wh[0]), int(self.image_wh[1])
        if len(boxes) and width > 0 and height > 0:
            # A box regressed past the border is still the object inside the image; every output format
            # (COCO, YOLO, JSON, drawings) needs it within the image.
            boxes = clip_boxes_to_image(boxes, (height, width))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "image_wh", (int(self.image_wh[0]), int(self.image_wh[1])))

    @classmethod
    def empty(cls, names: Sequence[str], image_wh: tuple[int, int], **kwargs: Any) -> Detections:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), tuple(names), image_wh, **kwargs)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Detections(
            self.boxes[index].reshape(-1, 4),
            self.scores[index].reshape(-1),
            self.labels[index].reshape(-1),
            self.names,
            self.image_wh,
            self.prompts,
            self.image_name,
            self.extra,
        )

    def __repr__(self) -> str:
        """One line: how many boxes on what, the best three, the names (not a tensor dump of every box)."""
        where = f" on {self.image_name}" if self.image_name else ""
        order = self.scores.argsort(descending=True, stable=True)[:3].tolist()
        best = ", ".join(f"{self.names[int(self.labels[i])]} {float(self.scores[i]):.2f}" for i in order)
        names = ", ".join(self.names[:5]) + (f", ... ({len(self.names)} names)" if len(self.names) > 5 else "")
        return (f"Detections({len(self)} boxes{where} ({self.image_wh[0]}x{self.image_wh[1]})"
                + (f"; best: {best}" + (", ..." if len(self) > 3 else "") if len(self) else "") + f"; names: {names})")

    @property
    def xyxy(self) -> torch.Tensor:
        """``(N, 4)`` xyxy absolute pixels (= ``boxes``; ultralytics' name)."""
        return self.boxes

    @property
    def xyxyn(self) -> torch.Tensor:
        """``(N, 4)`` xyxy normalised by the image width and height, in [0, 1]."""
        width, height = self.image_wh
        return self.boxes / torch.tensor([width, height, width, height], dtype=self.boxes.dtype)

    @property
    def conf(self) -> torch.Tensor:
        """``(N,)`` scores (= ``scores``; ultralytics' name)."""
        return self.scores

    @property
    def cls(self) -> torch.Tensor:
        """``(N,)`` label indices into ``names`` (= ``labels``; ultralytics' name)."""
        return self.labels

    @property
    def label_names(self) -> list[str]:
        """The name of each detection, ``(N,)``."""
        return [self.names[i] for i in self.labels.tolist()]

    def filter(self, threshold: float) -> Detections:
        """Keep detections with ``score >= threshold``."""
        return self[self.scores >= threshold]

    def nms(self, iou_threshold: float = 0.5, *, per_class: bool = True) -> Detections:
        """Non-maximum suppression (per class by default); result sorted by descending score."""
        if per_class:
            keep = batched_nms(self.boxes, self.scores, self.labels, iou_threshold)
        else:
            keep = nms(self.boxes, self.scores, iou_threshold)
        return self[keep]

    def topk(self, k: int) -> Detections:
        """The ``k`` highest-scoring detections, sorted."""
        order = torch.argsort(self.scores, descending=True, stable=True)[:k]
        return self[order]

    def to_coco(self, image_id: int | str, category_ids: Sequence[int] | Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """COCO result dicts (``bbox`` xywh absolute pixels).

        Args:
            image_id: the COCO image id.
            category_ids: COCO category id per label index (a sequence parallel to ``names``) or per
                name (a mapping). Default: ``label + 1``.
        """
        xywh = convert_boxes(self.boxes, BoxFormat.XYXY, BoxFormat.XYWH)
        results = []
        for box, score, label in zip(xywh.tolist(), self.scores.tolist(), self.labels.tolist()):
            if category_ids is None:
                category = label + 1
            elif isinstance(category_ids, Mapping):
                name = self.names[label]
                if name not in category_ids:
                    raise RegionPromptError(f"no COCO category id for detected name {name!r}")
                category = int(category_ids[name])
            else:
                category = int(category_ids[label])
            results.append(
                {"image_id": image_id, "category_id": category, "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
            )
        return results

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict: image info, vocabulary, and one entry per detection."""
        return {
            "image": self.image_name,
            "width": self.image_wh[0],
            "height": self.image_wh[1],
            "names": list(self.names),
            "prompts": [p.describe() for p in self.prompts] if self.prompts is not None else None,
            "detections": [
                {"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label, "name": self.names[label]}
                for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_hf(self) -> list[dict[str, Any]]:
        """Hugging Face ``pipeline("zero-shot-object-detection")`` style:
        ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]`` (pixels), best first."""
        order = self.scores.argsort(descending=True, stable=True).tolist()
        boxes, scores, names = self.boxes.tolist(), self.scores.tolist(), self.label_names
        return [{"score": round(scores[i], 5), "label": names[i],
                 "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (round(v, 2) for v in boxes[i])))} for i in order]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame``, one row per detection: ``xmin ymin xmax ymax`` (pixels), ``confidence``,
        ``class`` (label index), ``name`` -- the columns of YOLOv5's ``results.pandas().xyxy``.

        Raises:
            RegionPromptError: pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError:
            raise RegionPromptError("to_pandas() needs pandas: pip install pandas") from None
        boxes = self.boxes.tolist()
        return pd.DataFrame({"xmin": [b[0] for b in boxes], "ymin": [b[1] for b in boxes], "xmax": [b[2] for b in boxes],
                             "ymax": [b[3] for b in boxes], "confidence": self.scores.tolist(),
                             "class": self.labels.tolist(), "name": self.label_names})

    def plot(self, image: Image.Image | None = None, **kwargs: Any) -> Image.Image:
        """A copy of ``image`` with boxes, names and scores drawn (see :func:`regionprompt.draw.draw_boxes`).

        ``image=None`` reads the file the detections were made on (``image_name``, when it is a path).
        """
        from regionprompt.draw import draw_boxes

        image = self._source_image(image, "plot()")
        return draw_boxes(image, self.boxes, self.label_names, self.scores, label_ids=self.labels.tolist(), **kwargs)

    def _source_image(self, image: Image.Image | None, what: str) -> Image.Image:
        """``image``, or the image file the detections were made on."""
        if image is not None:
            return image
        from regionprompt.images import load_image

        if not self.image_name or not os.path.isfile(self.image_name):
            raise RegionPromptError(f"{what} needs the image: these detections were not made on an image file "
                                    f"({self.image_name or 'no name'}); pass it, e.g. dets.{what[:-1]}image)")
        return load_image(self.image_name).image

    def save(self, path: str | os.PathLike, image: Image.Image | None = None, **kwargs: Any) -> Path:
        """Write :meth:`plot`'s drawing to ``path`` (``.png``, ``.jpg``/``.jpeg`` or ``.webp``; written
        atomically, folders created); returns the path. ``image`` as for :meth:`plot`."""
        from regionprompt.data.files import atomic_write

        path = Path(path)
        kind = IMAGE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise RegionPromptError(f"{path}: save() writes an image; give a file ending in "
                                    f"{', '.join(sorted(IMAGE_SUFFIXES))} (to_json() gives the detections)")
        drawn = self.plot(image, **kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda tmp: drawn.convert("RGB").save(tmp, format=kind))

    def show(self, image: Image.Image | None = None, **kwargs: Any) -> Image.Image:
        """Open :meth:`plot`'s drawing in the system's image viewer (PIL's ``Image.show``; titled with
        ``image_name``) and return it. ``image`` as for :meth:`plot`."""
        drawn = self.plot(image, **kwargs)
        drawn.show(title=self.image_name or None)
        return drawn

    def crops(self, image: Image.Image | None = None) -> list[tuple[str, float, Image.Image]]:
        """``(name, score, crop)`` per detection, best first: the image cut to each box (rounded outward to
        whole pixels, at least 1 x 1). ``image`` as for :meth:`plot`."""
        image = self._source_image(image, "crops()")
        names = self.label_names
        out = []
        for i in self.scores.argsort(descending=True, stable=True).tolist():
            x1, y1, x2, y2 = self.boxes[i].tolist()
            left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
            right, bottom = min(image.width, max(left + 1, math.ceil(x2))), min(image.height, max(top + 1, math.ceil(y2)))
            out.append((names[i], float(self.scores[i]), image.crop((left, top, right, bottom))))
        return out

    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` (needs the ``supervision`` package; see :func:`to_supervision`)."""
        return to_supervision(self)


def to_supervision(detections: Detections) -> Any:
    """``supervision.Detections`` with ``xyxy`` (N, 4) float32 pixels, ``confidence`` (N,), ``class_id`` (N,)
    = our label indices, and ``data["class_name"]`` (N,) names.

    Raises:
        RegionPromptError: supervision is not installed.
    """
    try:
        import supervision as sv
    except ImportError:
        raise RegionPromptError("to_supervision() needs the supervision package: pip install supervision") from None
    import numpy as np

    return sv.Detections(
        xyxy=detections.boxes.numpy().astype(np.float32).reshape(-1, 4),
        confidence=detections.scores.numpy().astype(np.float32),
        class_id=detections.labels.numpy().astype(int),
        data={"class_name": np.asarray(detections.label_names, dtype=str)},
    )
