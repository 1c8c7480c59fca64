"""Hungarian matching of queries to ground-truth objects (DETR / DINO).

Cost of assigning query ``q`` to object ``g`` (whose prompt column is ``k``)::

    class_weight * focal(q, k) + box_weight * |box_q - box_g|_1 + giou_weight * (-GIoU(box_q, box_g))

with DINO's focal cost ``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))``, ``p`` the
query's probability for column ``k``. One cost matrix is computed for the whole batch and split per
image, then :func:`scipy.optimize.linear_sum_assignment` solves each image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from regionprompt.trex2.structures import DetectionTarget


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the three matching costs (DINO's defaults)."""

    class_weight: float = 2.0
    box_weight: float = 5.0
    giou_weight: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0


Match = tuple[torch.Tensor, torch.Tensor]  # (query indices, object indices), both (M,) long


class HungarianMatcher:
    """Callable: ``(logits (B, Q, K), boxes (B, Q, 4) cxcywh, targets) -> B matches``."""

    def __init__(self, costs: MatchCosts | None = None) -> None:
        self.costs = costs or MatchCosts()

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, target: DetectionTarget) -> torch.Tensor:
        """``(N, K)`` logits and ``(N, 4)`` boxes of N queries against one set of G objects -> ``(N, G)``."""
        c = self.costs
        prob = logits.sigmoid()[:, target.labels]  # (N, G)
        eps = 1e-8
        neg = (1 - c.alpha) * prob**c.gamma * -(1 - prob + eps).log()
        pos = c.alpha * (1 - prob) ** c.gamma * -(prob + eps).log()
        cost_class = pos - neg
        cost_box = torch.cdist(boxes, target.boxes.to(boxes.dtype), p=1)
        cost_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                         box_convert(target.boxes.to(boxes.dtype), "cxcywh", "xyxy"))
        return c.box_weight * cost_box + c.class_weight * cost_class + c.giou_weight * cost_giou

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[DetectionTarget]) -> list[Match]:
        batch, queries = logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        sizes = [len(t) for t in targets]
        empty = torch.zeros(0, dtype=torch.long)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        everything = DetectionTarget(torch.cat([t.boxes for t in targets]), torch.cat([t.labels for t in targets]))
        cost = self.cost_matrix(logits.flatten(0, 1).float(), boxes.flatten(0, 1).float(), everything)
        cost = cost.view(batch, queries, -1).cpu()
        matches = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            if sizes[b] == 0:
                matches.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(block[b].numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return matches
