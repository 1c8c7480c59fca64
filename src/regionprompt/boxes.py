"""Boxes whose format travels with the data, and every box-format conversion in the project.

Formats (``BoxFormat``):

* ``xyxy``   -- ``(x1, y1, x2, y2)``, top-left and bottom-right corners;
* ``xywh``   -- ``(x, y, w, h)``, top-left corner and size (COCO JSON);
* ``cxcywh`` -- ``(cx, cy, w, h)``, centre and size (DETR heads, YOLO labels).

Coordinates are either absolute pixels or normalised to ``[0, 1]`` by the image width (x, w) and
height (y, h). Pixel coordinates are continuous: a box covering the whole ``W x H`` image is
``(0, 0, W, H)`` in xyxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_area, box_convert, box_iou, clip_boxes_to_image

from regionprompt.errors import BoxFormatError


class BoxFormat(str, Enum):
    XYXY = "xyxy"
    XYWH = "xywh"
    CXCYWH = "cxcywh"


def _as_format(fmt: BoxFormat | str) -> BoxFormat:
    try:
        return BoxFormat(fmt)
    except ValueError:
        raise BoxFormatError(f"unknown box format {fmt!r}; expected one of xyxy, xywh, cxcywh") from None


def as_box_tensor(data: Any, *, what: str = "boxes") -> torch.Tensor:
    """Turn a sequence / array / tensor of boxes into a float32 ``(N, 4)`` tensor.

    A single box ``(4,)`` becomes ``(1, 4)``; an empty input becomes ``(0, 4)``. Non-finite values
    and any other shape raise :class:`BoxFormatError` naming ``what``.
    """
    if isinstance(data, torch.Tensor):
        tensor = data.detach().to(torch.float32)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(data, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise BoxFormatError(f"{what}: cannot read {type(data).__name__} as numbers ({exc})") from None
    if tensor.numel() == 0:
        return tensor.reshape(0, 4)
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[1] != 4:
        raise BoxFormatError(f"{what}: expected shape (N, 4), got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise BoxFormatError(f"{what}: contains NaN or infinite values")
    return tensor


def convert_boxes(boxes: torch.Tensor, in_fmt: BoxFormat | str, out_fmt: BoxFormat | str) -> torch.Tensor:
    """Convert ``(N, 4)`` boxes between formats (same coordinate scale in and out)."""
    src, dst = _as_format(in_fmt), _as_format(out_fmt)
    if src == dst:
        return boxes.clone()
    return box_convert(boxes, src.value, dst.value)


def _scale(image_wh: tuple[int, int]) -> torch.Tensor:
    width, height = image_wh
    if width <= 0 or height <= 0:
        raise BoxFormatError(f"image size must be positive, got width={width}, height={height}")
    return torch.tensor([width, height, width, height], dtype=torch.float32)


def normalize_boxes(boxes: torch.Tensor, image_wh: tuple[int, int]) -> torch.Tensor:
    """Absolute pixels -> ``[0, 1]`` (any format: x and w scale by width, y and h by height)."""
    return boxes / _scale(image_wh)


def denormalize_boxes(boxes: torch.Tensor, image_wh: tuple[int, int]) -> torch.Tensor:
    """``[0, 1]`` -> absolute pixels (any format)."""
    return boxes * _scale(image_wh)


@dataclass(frozen=True)
class Boxes:
    """``N`` boxes with an explicit format.

    Attributes:
        data: ``(N, 4)`` float32 tensor in ``format``.
        format: coordinate layout of ``data``.
        normalized: ``True`` if coordinates are fractions of the image size.
        image_wh: ``(width, height)`` in pixels of the image the boxes belong to; needed to convert
            between normalised and absolute coordinates and to clip.
    """

    data: torch.Tensor
    format: BoxFormat = BoxFormat.XYXY
    normalized: bool = False
    image_wh: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", as_box_tensor(self.data))
        object.__setattr__(self, "format", _as_format(self.format))
        if self.image_wh is not None:
            object.__setattr__(self, "image_wh", (int(self.image_wh[0]), int(self.image_wh[1])))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: Any) -> Boxes:
        data = self.data[index]
        return Boxes(data.reshape(-1, 4), self.format, self.normalized, self.image_wh)

    def to(self, format: BoxFormat | str, *, normalized: bool | None = None) -> Boxes:
        """The same boxes in another format and/or coordinate scale."""
        normalized = self.normalized if normalized is None else normalized
        data = convert_boxes(self.data, self.format, format)
        if normalized != self.normalized:
            if self.image_wh is None:
                raise BoxFormatError("converting between normalised and absolute boxes needs image_wh")
            data = normalize_boxes(data, self.image_wh) if normalized else denormalize_boxes(data, self.image_wh)
        return Boxes(data, format, normalized, self.image_wh)

    def xyxy(self) -> torch.Tensor:
        """``(N, 4)`` xyxy in absolute pixels (the format detectors and drawing use)."""
        return self.to(BoxFormat.XYXY, normalized=False).data

    def area(self) -> torch.Tensor:
        """``(N,)`` area in the current scale (pixels^2 when absolute)."""
        return box_area(convert_boxes(self.data, self.format, BoxFormat.XYXY))

    def clip(self) -> Boxes:
        """Clip to the image (``[0, W] x [0, H]`` or ``[0, 1]^2`` when normalised)."""
        if self.normalized:
            xyxy = convert_boxes(self.data, self.format, BoxFormat.XYXY).clamp(0.0, 1.0)
        else:
            if self.image_wh is None:
                raise BoxFormatError("clipping absolute boxes needs image_wh")
            width, height = self.image_wh
            xyxy = clip_boxes_to_image(convert_boxes(self.data, self.format, BoxFormat.XYXY), (height, width))
        return Boxes(convert_boxes(xyxy, BoxFormat.XYXY, self.format), self.format, self.normalized, self.image_wh)

    def iou(self, other: Boxes) -> torch.Tensor:
        """``(N, M)`` IoU with ``other`` (both compared in absolute xyxy if sizes are known)."""
        if self.normalized != other.normalized:
            return box_iou(self.xyxy(), other.xyxy())
        return box_iou(
            convert_boxes(self.data, self.format, BoxFormat.XYXY),
            convert_boxes(other.data, other.format, BoxFormat.XYXY),
        )

    def degenerate(self) -> torch.Tensor:
        """``(N,)`` bool: boxes with zero or negative width or height."""
        xyxy = convert_boxes(self.data, self.format, BoxFormat.XYXY)
        return (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])

    def outside(self, tolerance: float = 1.0) -> torch.Tensor:
        """``(N,)`` bool: boxes reaching beyond the image by more than ``tolerance`` (pixels, or a fraction when normalised)."""
        xyxy = convert_boxes(self.data, self.format, BoxFormat.XYXY)
        if self.normalized:
            width = height = 1.0
        elif self.image_wh is None:
            raise BoxFormatError("checking boxes against the image needs image_wh")
        else:
            width, height = self.image_wh
        return (
            (xyxy[:, 0] < -tolerance)
            | (xyxy[:, 1] < -tolerance)
            | (xyxy[:, 2] > width + tolerance)
            | (xyxy[:, 3] > height + tolerance)
        )

    def tolist(self) -> list[list[float]]:
        return self.data.tolist()

    @classmethod
    def cat(cls, items: Sequence[Boxes]) -> Boxes:
        """Concatenate boxes of the same image; converts all to the first one's format and scale."""
        if not items:
            return cls(torch.zeros(0, 4))
        first = items[0]
        data = torch.cat([b.to(first.format, normalized=first.normalized).data for b in items])
        return cls(data, first.format, first.normalized, first.image_wh)
