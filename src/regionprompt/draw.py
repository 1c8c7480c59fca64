"""Drawing boxes with names and scores on an image (for results, ground truth and the demo)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

# A fixed, colour-blind-friendly cycle so a category keeps its colour across images.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
    (213, 94, 0), (240, 228, 66), (120, 94, 240), (0, 0, 0), (170, 68, 153),
)


def color_for(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_boxes(
    image: Image.Image,
    boxes: torch.Tensor | Sequence[Sequence[float]],
    names: Sequence[str],
    scores: torch.Tensor | Sequence[float] | None = None,
    *,
    label_ids: Sequence[int] | None = None,
    width: int | None = None,
) -> Image.Image:
    """Return an RGB copy of ``image`` with ``(N, 4)`` xyxy absolute-pixel ``boxes`` drawn.

    Each box gets a caption ``"name 0.87"``; colours follow ``label_ids`` (default: by name).
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = width or max(1, round(min(canvas.size) / 200))
    box_list = boxes.tolist() if isinstance(boxes, torch.Tensor) else [list(b) for b in boxes]
    score_list = scores.tolist() if isinstance(scores, torch.Tensor) else (list(scores) if scores is not None else None)
    name_index: dict[str, int] = {}
    for i, (box, name) in enumerate(zip(box_list, names)):
        key = label_ids[i] if label_ids is not None else name_index.setdefault(name, len(name_index))
        color = color_for(int(key))
        draw.rectangle(box, outline=color, width=line)
        caption = name if score_list is None else f"{name} {score_list[i]:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), caption, font=font)
        y = box[1] - (bottom - top) - 2 if box[1] - (bottom - top) - 2 >= 0 else box[1]
        draw.rectangle((box[0], y, box[0] + (right - left) + 4, y + (bottom - top) + 2), fill=color)
        draw.text((box[0] + 2, y), caption, fill=(255, 255, 255), font=font)
    return canvas


def draw_prompts(image: Image.Image, boxes: Sequence[Sequence[float]] = (), points: Sequence[Sequence[float]] = (),
                 negative_boxes: Sequence[Sequence[float]] = ()) -> Image.Image:
    """Draw exemplar prompts on ``image`` in place (and return it): boxes and points white over black,
    negative boxes red over black, unlike any detection colour. Coordinates: absolute pixels."""
    draw = ImageDraw.Draw(image)
    for box, colour in [*((b, (255, 255, 255)) for b in boxes), *((b, (220, 30, 30)) for b in negative_boxes)]:
        draw.rectangle([float(v) for v in box], outline=(0, 0, 0), width=4)
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
    for x, y in points:
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(255, 255, 255), outline=(0, 0, 0), width=2)
    return image
