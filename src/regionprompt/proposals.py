"""What every proposal source returns, so detectors and pseudo-labelling do not depend on how proposals are made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Proposals:
    """Class-agnostic candidate boxes of one image.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy, absolute pixels of the image given to ``propose``.
        objectness: ``(N,)`` float32 probabilities in [0, 1], sorted in descending order.
        class_scores: ``(N, C)`` float32 in [0, 1], optional: a per-category objectness for the C
            categories of one detect call, from a detector that already scored them (T-Rex2's boxes named
            by the region namer); a zero-shot detector uses it in place of ``objectness``.
    """

    boxes: torch.Tensor
    objectness: torch.Tensor
    class_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4 or self.objectness.shape != self.boxes.shape[:1]:
            raise ValueError(f"Proposals need boxes (N, 4) and objectness (N,), got {tuple(self.boxes.shape)} "
                             f"and {tuple(self.objectness.shape)}")
        if self.class_scores is not None and (self.class_scores.ndim != 2 or self.class_scores.shape[0] != len(self.boxes)):
            raise ValueError(f"class_scores must be (N, C) with N = {len(self.boxes)}, got {tuple(self.class_scores.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def top(self, k: int) -> Proposals:
        """The ``k`` most object-like proposals."""
        scores = None if self.class_scores is None else self.class_scores[:k]
        return Proposals(self.boxes[:k], self.objectness[:k], scores)


class ProposalSource(Protocol):
    """Anything that proposes boxes: the trained RPN, or ground-truth boxes in evaluations."""

    def propose(self, images: torch.Tensor, *, max_proposals: int = 300) -> list[Proposals]:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> one :class:`Proposals` per image (pixels of that input)."""
        ...
