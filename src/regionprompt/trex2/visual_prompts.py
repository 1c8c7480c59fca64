"""Pixel-space box / point prompts -> a checked, normalised :class:`VisualPromptBatch`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_convert

from regionprompt.errors import PromptError
from regionprompt.trex2.structures import VisualPromptBatch

TOLERANCE_PX = 1.0  # prompts may reach this far past the border (rounding of drawn boxes)


def _check(coords: torch.Tensor, image_wh: tuple[int, int], where: str) -> torch.Tensor:
    """Validate ``(M, 4)`` xyxy or ``(M, 2)`` pixel prompts of one image; returns them clamped to the image."""
    width, height = image_wh
    if not torch.isfinite(coords).all():
        raise PromptError(f"{where}: prompts contain NaN or infinite values")
    if coords.shape[-1] == 4:
        sizes = coords[:, 2:] - coords[:, :2]
        bad = (sizes <= 0).any(dim=1)
        if bad.any():
            raise PromptError(f"{where}: box prompt {coords[bad][0].tolist()} has zero or negative size "
                              "(expected x1 < x2 and y1 < y2)")
        lo, hi = coords[:, :2], coords[:, 2:]
    else:
        lo = hi = coords
    limit = coords.new_tensor([width, height])
    outside = (lo < -TOLERANCE_PX).any(dim=1) | (hi > limit + TOLERANCE_PX).any(dim=1)
    if outside.any():
        raise PromptError(f"{where}: prompt {coords[outside][0].tolist()} lies outside the {width}x{height} image")
    bound = limit.repeat(coords.shape[-1] // 2)
    return torch.minimum(coords.clamp(min=0.0), bound)


def make_prompt_batch(
    groups: Sequence[tuple[int, torch.Tensor]], image_wh: Sequence[tuple[int, int]]
) -> VisualPromptBatch:
    """One prompt group per ``(image index, prompts)``: ``(M, 4)`` xyxy boxes or ``(M, 2)`` ``(x, y)`` points,
    absolute pixels of that image (``image_wh[index]`` = ``(width, height)``). All groups: one kind.

    Boxes become normalised cxcywh, points normalised ``(x, y)``; a point exactly on the border is valid.

    Raises:
        PromptError: an empty group, mixed kinds, a box of zero area, or a prompt outside its image.
    """
    if not groups:
        raise PromptError("no visual prompts given")
    tensors = [torch.as_tensor(p, dtype=torch.float32) for _, p in groups]
    width = tensors[0].shape[-1] if tensors[0].ndim == 2 else 0
    if width not in (2, 4) or any(t.ndim != 2 or t.shape[-1] != width for t in tensors):
        raise PromptError("visual prompts must all be (M, 4) xyxy boxes or all (M, 2) points, got shapes "
                          f"{[tuple(t.shape) for t in tensors]}")
    count = max(t.shape[0] for t in tensors)
    coords = torch.zeros(len(groups), count, width)
    mask = torch.zeros(len(groups), count, dtype=torch.bool)
    index = torch.zeros(len(groups), dtype=torch.long)
    for g, ((image, _), prompts) in enumerate(zip(groups, tensors)):
        if prompts.shape[0] == 0:
            raise PromptError(f"prompt group {g} (image {image}) has no prompts")
        if not 0 <= image < len(image_wh):
            raise PromptError(f"prompt group {g} refers to image {image}, but there are {len(image_wh)} images")
        w, h = image_wh[image]
        checked = _check(prompts, (w, h), f"image {image}")
        scale = checked.new_tensor([w, h] * (width // 2))
        normed = checked / scale
        if width == 4:
            normed = box_convert(normed, "xyxy", "cxcywh")
        coords[g, : len(normed)] = normed
        mask[g, : len(normed)] = True
        index[g] = image
    if width == 4:
        coords[~mask] = torch.tensor([0.5, 0.5, 1.0, 1.0])  # padding: harmless whole-image boxes
    else:
        coords[~mask] = 0.5
    return VisualPromptBatch(coords, mask, index)
