"""Region embeddings and region-concept scores of a CLIP model (RegionCLIP's region encoder).

The same functions serve the frozen teacher (pseudo labels, distillation targets) and the student
(training), so both see regions in exactly the same way: the whole image goes through the image tower
up to its region feature map (``res4`` for a ResNet), each box is RoIAligned to ``14 x 14`` there, then
``res5`` and the attention pool give one embedding per box (:meth:`ResNetImageEncoder.pool_regions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder

ROI_SIZE = 14  # RoIAlign grid on res4 (RegionCLIP); res5 halves it to the attention pool's 7 x 7


def region_feature_map(model: RegionPromptCLIP, images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float RGB in [0, 1] -> the map regions are pooled from (``res4`` or ViT ``patch``)."""
    visual = model.visual
    pixels = visual.normalize(images)
    if visual.region_feature == "res4":
        return visual.features(pixels, stop_at="res4")["res4"]  # type: ignore[call-arg]
    return visual.features(pixels)[visual.region_feature]


def encode_regions(model: RegionPromptCLIP, images: torch.Tensor, boxes_per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """Region embeddings, L2-normalised.

    Args:
        images: ``(B, 3, H, W)`` float RGB in [0, 1].
        boxes_per_image: B tensors ``(K_i, 4)`` xyxy, absolute pixels of ``images``.
    Returns:
        ``(sum K_i, D)``, regions in image order then box order. Differentiable (wrap the call in
        ``torch.no_grad()`` for a frozen model).
    """
    feature_map = region_feature_map(model, images)
    return F.normalize(model.visual.pool_regions(feature_map, list(boxes_per_image), ROI_SIZE), dim=-1)


def concept_logits(region_emb: torch.Tensor, concept_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity over the temperature: ``(R, D)`` and ``(C, D)`` normalised -> ``(R, C)``."""
    return region_emb @ concept_emb.t() / temperature


def embed_concepts(model: RegionPromptCLIP, names: Sequence[str], templates: str = "emoji",
                   cache: EmbeddingCache | None = None) -> torch.Tensor:
    """``(C, D)`` normalised concept embeddings from ``model``'s text side, ensembled over ``templates``."""
    with torch.no_grad():
        return PromptEmbedder(model.text_encoder(), templates, cache).embed(list(names)).float()


def whole_image_boxes(batch: int, height: int, width: int) -> list[torch.Tensor]:
    """One ``(1, 4)`` box covering each of ``batch`` images of ``height x width`` pixels."""
    return [torch.tensor([[0.0, 0.0, float(width), float(height)]]) for _ in range(batch)]
