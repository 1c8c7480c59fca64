"""Region embeddings from a CLIP image tower, the RegionCLIP way, for batches of images of any size.

Every image is resized (aspect ratio not kept, as in :mod:`regionprompt.eval.zero_shot`) to the
square input size the model was trained at; boxes in the image's own pixels are scaled to that
input, RoIAligned on ``res4`` (14 x 14), run through ``res5`` and the attention pool
(:meth:`ResNetImageEncoder.pool_regions`; a ViT tower pools its patch-token map instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from regionprompt.images import to_tensor
from regionprompt.regionclip.region_encoder import ROI_SIZE, region_feature_map
from regionprompt.vl.clip_model import RegionPromptCLIP


class RegionEncoder:
    """Batched region embeddings of one :class:`RegionPromptCLIP` (inference only).

    Args:
        model: the CLIP model whose image tower embeds regions (put in eval mode).
        input_size: side of the square model input; ``None``: the card's ``image_size``.
        roi_size: RoIAlign grid on the region feature map (RegionCLIP: 14).
        max_regions: regions pooled per call, which bounds the memory of ``res5`` on many proposals.
    """

    def __init__(self, model: RegionPromptCLIP, *, input_size: int | None = None, roi_size: int = ROI_SIZE,
                 max_regions: int = 256) -> None:
        self.model = model.eval()
        self.input_size = int(input_size or model.card.vision.image_size)
        self.roi_size = roi_size
        self.max_regions = max_regions

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> ``(B, 3, S, S)`` float in [0, 1] at the model's input size ``S``."""
        size = (self.input_size, self.input_size)
        return torch.stack([to_tensor(im.resize(size, Image.BILINEAR)) for im in images]).to(self.device)

    def scale(self, image_wh: tuple[int, int]) -> torch.Tensor:
        """``(4,)`` factors taking xyxy pixels of a ``(width, height)`` image to the model input."""
        width, height = image_wh
        return torch.tensor([self.input_size / width, self.input_size / height] * 2, device=self.device)

    @torch.no_grad()
    def feature_maps(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` in [0, 1] -> the region feature map ``(B, C, S/16, S/16)`` (``res4``, or ViT patches)."""
        return region_feature_map(self.model, pixels)

    @torch.no_grad()
    def pool(self, feature_map: torch.Tensor, boxes: torch.Tensor, image_wh: tuple[int, int]) -> torch.Tensor:
        """Embeddings of boxes on ONE image.

        Args:
            feature_map: ``(C, h, w)``, one image's map from :meth:`feature_maps`.
            boxes: ``(K, 4)`` xyxy, absolute pixels of the original ``(width, height)`` image.
        Returns:
            ``(K, D)`` float32, L2-normalised.
        """
        boxes = boxes.to(self.device, torch.float32) * self.scale(image_wh)
        fmap = feature_map.unsqueeze(0)
        parts = [
            self.model.visual.pool_regions(fmap, [boxes[i : i + self.max_regions]], self.roi_size)
            for i in range(0, len(boxes), self.max_regions)
        ]
        if not parts:
            return torch.zeros(0, self.model.embed_dim, device=self.device)
        return F.normalize(torch.cat(parts).float(), dim=-1)

    def embed(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor:
        """``(K, 4)`` xyxy pixel boxes on ``image`` -> ``(K, D)`` L2-normalised region embeddings."""
        fmap = self.feature_maps(self.pixels([image]))[0]
        return self.pool(fmap, boxes, image.size)
