"""The four computations an ONNX export holds, as ``nn.Module`` views of a loaded detector.

Each view only re-arranges calls of the torch model (no weights of its own), so what is exported is
exactly what :class:`~regionprompt.detect.trex2_engine.TRex2Engine` runs; the prompt side (text
embedding with its cache, visual prompt encoding, concepts) stays outside the graphs, and prompt
embeddings enter the decoder as an input of any length.

==================  ====================================================  ==========================================
graph               inputs                                                outputs
==================  ====================================================  ==========================================
``image``           ``pixels`` (B, 3, S, S) in [0, 1], already resized    ``memory`` (B, N, D) encoder tokens
``decoder``         ``memory`` (B, N, D), ``prompts`` (K, D)               ``logits`` (B, Q, K),
                    L2-normalised, ``selecting`` (K,) bool                 ``boxes`` (B, Q, 4) cxcywh in [0, 1]
``namer_features``  ``pixels`` (B, 3, s, s) in [0, 1] at the namer's size  ``features`` (B, C, s/16, s/16)
``namer_regions``   ``features`` (1, C, h, w), ``boxes`` (R, 4) xyxy       ``embeddings`` (R, E) L2-normalised
                    pixels of the namer's input
==================  ====================================================  ==========================================

``S``, ``N`` (tokens of all levels) and the level shapes are fixed by the detector's image size; B, K
and R are free. ``selecting`` marks the prompts allowed to pick queries (negative prompts are scored
but pick none, as in the torch engine).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from regionprompt.regionclip.region_encoder import region_feature_map
from regionprompt.trex2.model import TRex2
from regionprompt.trex2.structures import EncodedImages
from regionprompt.vl.clip_model import RegionPromptCLIP

IMAGE_GRAPH, DECODER_GRAPH = "image", "decoder"
NAMER_FEATURES_GRAPH, NAMER_REGIONS_GRAPH = "namer_features", "namer_regions"


class ImageGraph(nn.Module):
    """``pixels`` (B, 3, S, S) in [0, 1] -> ``memory`` (B, N, D): CLIP backbone res3..res5 + deformable encoder."""

    def __init__(self, model: TRex2) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixels).memory


class DecoderGraph(nn.Module):
    """``memory`` (B, N, D), ``prompts`` (K, D), ``selecting`` (K,) bool -> final-layer ``logits`` (B, Q, K) and
    ``boxes`` (B, Q, 4) cxcywh normalised: prompt-driven query selection + decoder, no denoising."""

    def __init__(self, model: TRex2, spatial_shapes: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.model = model
        self.spatial_shapes = spatial_shapes

    def forward(self, memory: torch.Tensor, prompts: torch.Tensor, selecting: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        encoded = EncodedImages(memory, self.spatial_shapes)
        _, reference = model.query_selection(encoded, prompts, model.card.num_queries, selecting=selecting)
        matching, _ = model.decoder(encoded, prompts, reference)
        return matching[-1].logits, matching[-1].boxes


class NamerFeatureGraph(nn.Module):
    """``pixels`` (B, 3, s, s) in [0, 1] -> the namer's region feature map (``res4``, or ViT patch tokens)."""

    def __init__(self, clip: RegionPromptCLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return region_feature_map(self.clip, pixels)


class NamerRegionGraph(nn.Module):
    """``features`` (1, C, h, w) of one image + ``boxes`` (R, 4) xyxy pixels of the namer's input ->
    ``embeddings`` (R, E), L2-normalised: RoIAlign (aligned, as ``pool_regions``) then the tower's head."""

    def __init__(self, clip: RegionPromptCLIP, roi_size: int) -> None:
        super().__init__()
        self.clip = clip
        self.roi_size = roi_size
        visual = clip.visual
        self.stride = visual.feature_strides[visual.region_feature]  # type: ignore[index]

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        # (R, 5) rois with batch index 0: the list form of roi_align validates boxes with Python branches,
        # which a traced graph cannot hold; the engine checks boxes before they reach the graph.
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes.to(features.dtype)], dim=1)
        pooled = roi_align(features, rois, output_size=self.roi_size, spatial_scale=1.0 / self.stride, aligned=True)
        return F.normalize(self.clip.visual.embed_rois(pooled).float(), dim=-1)


__all__ = ["DECODER_GRAPH", "IMAGE_GRAPH", "NAMER_FEATURES_GRAPH", "NAMER_REGIONS_GRAPH", "DecoderGraph",
           "ImageGraph", "NamerFeatureGraph", "NamerRegionGraph"]
