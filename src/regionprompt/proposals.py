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
    """

    boxes: torch.Tensor
    objectness: torch.Tensor

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4 or self.objectness.shape != self.boxes.shape[:1]:
            raise ValueError(f"Proposals need boxes (N, 4) and objectness (N,), got {tuple(self.boxes.shape)} "
                             f"and {tuple(self.objectness.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def top(self, k: int) -> Proposals:
        """The ``k`` most object-like proposals."""
        return Proposals(self.boxes[:k], self.objectness[:k])


class ProposalSource(Protocol):
    """Anything that proposes boxes: the trained RPN, or ground-truth boxes in evaluations."""

    def propose(self, images: torch.Tensor, *, max_proposals: int = 300) -> list[Proposals]:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> one :class:`Proposals` per image (pixels of that input)."""
        ...
