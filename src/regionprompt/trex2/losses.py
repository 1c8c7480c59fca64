"""T-Rex2's training losses: a loss dict plus a weight dict (DETR's ``SetCriterion`` pattern).

Per prediction stage (every decoder layer, the encoder's query selection, every layer's denoising
queries):

* ``cls`` -- sigmoid focal loss of every query against every prompt column; a query matched to an
  object is positive for *every* column whose concept is the object's (in visual iterations several
  images prompt the same concept, and each of their embeddings should find it);
* ``l1`` and ``giou`` -- on matched (or, for denoising, reconstructing) queries, cxcywh L1 and
  ``1 - GIoU`` (:func:`torchvision.ops.generalized_box_iou_loss`).

All three are divided by the number of objects in the batch (times the denoising groups for
denoising). Negatives come from the batch: every image is classified against all of the step's
prompt columns, including the categories of the other images.

Separately, :func:`alignment_loss` is the text-visual InfoNCE: a visual prompt embedding as anchor,
its concept's text embedding as positive, the other concepts' text embeddings as negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from regionprompt.trex2.matcher import HungarianMatcher, Match
from regionprompt.trex2.structures import DetectionTarget, LayerPredictions, TRex2Output


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term (DINO's for detection)."""

    cls: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    align: float = 1.0  # text-visual alignment (visual iterations only)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, normalizer: float, *, alpha: float = 0.25,
               gamma: float = 2.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Summed sigmoid focal loss of ``(..., K)`` logits against 0/1 targets, divided by ``normalizer``.

    ``mask`` (``logits.shape[:-1]``, bool) leaves out queries (e.g. denoising padding).
    """
    loss = sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none")
    if mask is not None:
        loss = loss * mask[..., None].to(loss.dtype)
    return loss.sum() / normalizer


def box_losses(pred: torch.Tensor, gt: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, 4)`` cxcywh predictions and ground truth -> (L1, 1 - GIoU), each summed / ``normalizer``."""
    if pred.shape[0] == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    l1 = F.l1_loss(pred, gt, reduction="sum") / normalizer
    giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"),
                                    reduction="sum") / normalizer
    return l1, giou


def alignment_loss(visual: torch.Tensor, visual_concepts: torch.Tensor, text: torch.Tensor,
                   text_concepts: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE: each visual embedding ``(N, D)`` must pick its own concept's text embedding among ``(U, D)``.

    Args:
        visual_concepts: ``(N,)`` concept of each visual embedding; each must occur in ``text_concepts``.
        text_concepts: ``(U,)`` distinct concepts of the text embeddings.
        temperature: softmax temperature on cosine similarities (both sides L2-normalised).
    """
    if visual.shape[0] == 0:
        return visual.sum() * 0.0
    match = visual_concepts[:, None] == text_concepts[None, :]
    if not bool(match.any(dim=1).all()):
        raise ValueError("every visual concept needs its text embedding")
    logits = F.normalize(visual, dim=-1) @ F.normalize(text, dim=-1).t() / temperature
    return F.cross_entropy(logits, match.float().argmax(dim=1))


def class_targets(logits: torch.Tensor, matches: Sequence[Match], targets: Sequence[DetectionTarget],
                  column_concepts: torch.Tensor) -> torch.Tensor:
    """``(B, Q, K)`` 0/1: a matched query is positive for every column of its object's concept."""
    out = torch.zeros_like(logits)
    for b, (rows, cols) in enumerate(matches):
        if rows.numel():
            concepts = column_concepts[targets[b].labels[cols]]  # (M,)
            out[b, rows] = (concepts[:, None] == column_concepts[None, :]).to(out.dtype)
    return out


class TRex2Criterion:
    """``(output, targets, column_concepts) -> {name: loss}``; ``"loss"`` is the weighted total.

    Names: ``cls``/``l1``/``giou`` for the last decoder layer, ``*_<i>`` for earlier layers, ``*_enc``
    for query selection, ``*_dn<i>`` for the denoising queries of layer i.
    """

    def __init__(self, matcher: HungarianMatcher | None = None, weights: LossWeights | None = None) -> None:
        self.matcher = matcher or HungarianMatcher()
        self.weights = weights or LossWeights()

    def _stage(self, pred: LayerPredictions, targets: Sequence[DetectionTarget], column_concepts: torch.Tensor,
               normalizer: float) -> dict[str, torch.Tensor]:
        matches = self.matcher(pred.logits, pred.boxes, targets)
        w = self.weights
        cls = focal_loss(pred.logits, class_targets(pred.logits, matches, targets, column_concepts), normalizer,
                         alpha=w.focal_alpha, gamma=w.focal_gamma)
        matched = torch.cat([pred.boxes[b, rows] for b, (rows, _) in enumerate(matches)])
        gt = torch.cat([t.boxes[cols] for t, (_, cols) in zip(targets, matches)]).to(matched.dtype)
        l1, giou = box_losses(matched, gt, normalizer)
        return {"cls": cls, "l1": l1, "giou": giou}

    def _denoising(self, pred: LayerPredictions, output: TRex2Output, targets: Sequence[DetectionTarget],
                   column_concepts: torch.Tensor, normalizer: float, valid: torch.Tensor | None) -> dict[str, torch.Tensor]:
        layout = output.layout
        assert layout is not None
        matches = list(zip(layout.positive_index, layout.positive_target))
        w = self.weights
        norm = normalizer * layout.groups
        cls = focal_loss(pred.logits, class_targets(pred.logits, matches, targets, column_concepts), norm,
                         alpha=w.focal_alpha, gamma=w.focal_gamma, mask=valid)
        matched = torch.cat([pred.boxes[b, rows] for b, (rows, _) in enumerate(matches)])
        gt = torch.cat([t.boxes[cols] for t, (_, cols) in zip(targets, matches)]).to(matched.dtype)
        l1, giou = box_losses(matched, gt, norm)
        return {"cls": cls, "l1": l1, "giou": giou}

    def __call__(self, output: TRex2Output, targets: Sequence[DetectionTarget], column_concepts: torch.Tensor,
                 *, denoising_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args:
            targets: per image; ``labels`` index the prompt columns.
            column_concepts: ``(K,)`` concept id of each prompt column.
            denoising_valid: ``(B, pad)`` real (non-padding) denoising queries.
        """
        normalizer = float(max(1, sum(len(t) for t in targets)))
        terms: dict[str, torch.Tensor] = {}
        last = len(output.layers) - 1
        for i, pred in enumerate(output.layers):
            suffix = "" if i == last else f"_{i}"
            terms.update({k + suffix: v for k, v in self._stage(pred, targets, column_concepts, normalizer).items()})
        terms.update({k + "_enc": v for k, v in self._stage(output.encoder, targets, column_concepts, normalizer).items()})
        for i, pred in enumerate(output.denoising):
            found = self._denoising(pred, output, targets, column_concepts, normalizer, denoising_valid)
            terms.update({f"{k}_dn{i}": v for k, v in found.items()})
        w = {"cls": self.weights.cls, "l1": self.weights.l1, "giou": self.weights.giou}
        total = sum(w[name.split("_")[0]] * value for name, value in terms.items())
        terms["loss"] = total  # type: ignore[assignment]
        return terms
