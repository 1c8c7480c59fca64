"""CLIP image towers as feature extractors for detectors.

Two families, both subclasses of open_clip's modules so that their parameter names (and so the state-dict
keys under ``visual.``) are exactly those of OpenAI / open_clip checkpoints:

* :class:`ResNetImageEncoder` (open_clip ``ModifiedResNet``, the RegionCLIP recognition backbone):
  ``features`` gives ``stem``, ``res2``..``res5`` maps; ``pool_regions`` runs RoIAlign on ``res4``, then
  ``res5`` and the attention pool on each region (RegionCLIP's region encoder).
* :class:`ViTImageEncoder` (open_clip ``VisionTransformer``): a single-scale ``patch`` token map and the
  class-token embedding. Region pooling: RoIAlign on the patch-token map, mean over the RoI grid, then the
  ViT's final LayerNorm and projection. A ViT has no per-region class token, so this is an approximation
  chosen for speed (one transformer pass per image, not per region); it does not reproduce the whole-image
  class-token embedding for a whole-image box.

All methods take *normalised* pixels: call ``encoder.normalize(images)`` on ``(B, 3, H, W)`` float images
in [0, 1] first (CLIP mean/std travel with the encoder as buffers). Boxes are ``(K, 4)`` xyxy in absolute
pixels of the input image.

Images of a resolution other than the card's are accepted: the (fixed-grid) positional embeddings of the
attention pool / ViT are resized bicubically to the feature grid, as RegionCLIP does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from regionprompt.errors import BoxFormatError
from regionprompt.vl.cards import ModelCard
from regionprompt.vl.open_clip_parts import import_parts

_modified_resnet, _transformer = import_parts("modified_resnet", "transformer")
ModifiedResNet = _modified_resnet.ModifiedResNet
LayerNorm, QuickGELU, VisionTransformer = _transformer.LayerNorm, _transformer.QuickGELU, _transformer.VisionTransformer

RESNET_FEATURES = ("stem", "res2", "res3", "res4", "res5")


def resize_grid_embedding(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1 + gh * gw, C)`` positional embedding (class slot first) to a ``size`` grid.

    Returns ``(1 + size[0] * size[1], C)``; the input itself when the grid already matches.
    """
    if tuple(grid) == tuple(size):
        return pos
    cls, spatial = pos[:1], pos[1:]
    channels = spatial.shape[-1]
    spatial = spatial.reshape(1, grid[0], grid[1], channels).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=size, mode="bicubic", align_corners=False)
    spatial = spatial.permute(0, 2, 3, 1).reshape(size[0] * size[1], channels)
    return torch.cat([cls, spatial], dim=0)


def _check_boxes(boxes_per_image: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
    if len(boxes_per_image) != batch:
        raise BoxFormatError(f"got boxes for {len(boxes_per_image)} images but features for {batch}")
    checked = []
    for i, boxes in enumerate(boxes_per_image):
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise BoxFormatError(f"boxes of image {i} must be (K, 4) xyxy, got shape {tuple(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise BoxFormatError(f"boxes of image {i} contain inf or NaN")
        checked.append(boxes)
    return checked


class _EncoderMixin:
    """What both towers share: CLIP normalisation and the RoIAlign front end of region pooling."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def _register_pixel_stats(self, card: ModelCard) -> None:
        # Non-persistent: the statistics come from the card, so checkpoints keep OpenAI's exact keys.
        self.register_buffer("pixel_mean", torch.tensor(card.image_mean).view(1, 3, 1, 1), persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("pixel_std", torch.tensor(card.image_std).view(1, 3, 1, 1), persistent=False)  # type: ignore[attr-defined]

    def set_pixel_stats(self, card: ModelCard) -> None:
        """(Re)set the normalisation statistics from a card."""
        self.pixel_mean = torch.tensor(card.image_mean).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor(card.image_std).view(1, 3, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> CLIP-normalised pixels (same shape)."""
        return (images - self.pixel_mean.to(images.device, images.dtype)) / self.pixel_std.to(images.device, images.dtype)

    @staticmethod
    def _roi_align(
        feature_map: torch.Tensor, boxes_per_image: Sequence[torch.Tensor], output_size: int, stride: int
    ) -> torch.Tensor:
        """``(B, C, h, w)`` map + per-image boxes -> ``(sum K, C, output_size, output_size)``."""
        boxes = [b.to(feature_map.dtype) for b in _check_boxes(boxes_per_image, feature_map.shape[0])]
        # aligned=True: pixel-index box coordinates map to continuous feature coordinates without the
        # half-pixel shift, so a whole-image box samples exactly the feature cell centres.
        return roi_align(feature_map, boxes, output_size=output_size, spatial_scale=1.0 / stride, aligned=True)


class ResNetImageEncoder(_EncoderMixin, ModifiedResNet):
    """open_clip's ModifiedResNet with multi-scale features and region pooling.

    Feature maps for an input of ``(B, 3, H, W)`` with ``w = card.vision.width``:

    ======  ===========================  ======
    name    shape                        stride
    ======  ===========================  ======
    stem    (B, w, H/4, W/4)             4
    res2    (B, 4w, H/4, W/4)            4
    res3    (B, 8w, H/8, W/8)            8
    res4    (B, 16w, H/16, W/16)         16
    res5    (B, 32w, H/32, W/32)         32
    ======  ===========================  ======
    """

    region_feature = "res4"

    def __init__(self, card: ModelCard) -> None:
        vision = card.vision
        super().__init__(
            layers=list(vision.layers),  # type: ignore[arg-type]
            output_dim=card.embed_dim,
            heads=vision.heads,
            image_size=vision.image_size,
            width=vision.width,
        )
        self._register_pixel_stats(card)
        self.pool_grid = vision.image_size // 32
        w = vision.width
        self.feature_strides = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
        self.feature_channels = {"stem": w, "res2": 4 * w, "res3": 8 * w, "res4": 16 * w, "res5": 32 * w}

    def features(self, x: torch.Tensor, *, stop_at: str = "res5") -> dict[str, torch.Tensor]:
        """Normalised ``(B, 3, H, W)`` pixels -> feature maps ``stem`` .. ``stop_at`` (see class doc)."""
        if stop_at not in RESNET_FEATURES:
            raise ValueError(f"stop_at must be one of {RESNET_FEATURES}, got {stop_at!r}")
        blocks = (self.stem, self.layer1, self.layer2, self.layer3, self.layer4)
        out: dict[str, torch.Tensor] = {}
        for name, block in zip(RESNET_FEATURES, blocks):
            x = block(x)
            out[name] = x
            if name == stop_at:
                break
        return out

    def res5(self, res4: torch.Tensor) -> torch.Tensor:
        """``(N, 16w, h, w)`` -> ``(N, 32w, h/2, w/2)`` (the last residual stage)."""
        return self.layer4(res4)

    def attention_pool(self, res5: torch.Tensor) -> torch.Tensor:
        """``(N, 32w, h, w)`` -> ``(N, embed_dim)`` unnormalised, for any ``h, w`` (positional embedding resized)."""
        pool = self.attnpool
        n, c, h, w = res5.shape
        pos = resize_grid_embedding(pool.positional_embedding, (self.pool_grid, self.pool_grid), (h, w))
        x = res5.reshape(n, c, h * w).permute(2, 0, 1)  # (hw, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + pos[:, None, :].to(x.dtype)
        # The same call as open_clip's AttentionPool2d.forward, with the resized positional embedding.
        x, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=c,
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return x[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` -> whole-image embedding ``(B, embed_dim)``, unnormalised."""
        return self.attention_pool(self.features(x)["res5"])

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One pass giving both the whole-image embedding and all feature maps."""
        feats = self.features(x)
        return self.attention_pool(feats["res5"]), feats

    def pool_regions(
        self, res4: torch.Tensor, boxes_per_image: Sequence[torch.Tensor], output_size: int = 14
    ) -> torch.Tensor:
        """Region embeddings (RegionCLIP): RoIAlign on ``res4`` -> ``res5`` -> attention pool.

        Args:
            res4: ``(B, 16w, H/16, W/16)`` from :meth:`features`.
            boxes_per_image: B tensors ``(K_i, 4)`` xyxy, absolute pixels of the input image.
            output_size: RoI grid on ``res4``; ``res5`` halves it (14 -> 7, RN50's pool grid at 224 px).
        Returns:
            ``(sum K_i, embed_dim)`` unnormalised, regions in image order then box order.
        """
        rois = self._roi_align(res4, boxes_per_image, output_size, self.feature_strides["res4"])
        if rois.shape[0] == 0:
            return res4.new_zeros((0, self.output_dim))
        return self.embed_rois(rois)

    def embed_rois(self, rois: torch.Tensor) -> torch.Tensor:
        """``(R, 16w, g, g)`` RoIAligned ``res4`` features -> ``(R, embed_dim)`` unnormalised (``res5`` +
        attention pool). Apart from :meth:`pool_regions` so an exported graph can run it after its own RoIAlign."""
        return self.attention_pool(self.res5(rois))


class ViTImageEncoder(_EncoderMixin, VisionTransformer):
    """open_clip's VisionTransformer with a patch-token feature map and region pooling.

    Features for an input ``(B, 3, H, W)`` with patch size ``p``: ``patch`` = ``(B, width, H/p, W/p)``,
    the last block's patch tokens (before the final LayerNorm), stride ``p``.
    """

    region_feature = "patch"

    def __init__(self, card: ModelCard) -> None:
        vision = card.vision
        super().__init__(
            image_size=vision.image_size,
            patch_size=vision.patch_size,  # type: ignore[arg-type]
            width=vision.width,
            layers=vision.layers,  # type: ignore[arg-type]
            heads=vision.heads,
            mlp_ratio=vision.mlp_ratio,
            output_dim=card.embed_dim,
            act_layer=QuickGELU if card.quick_gelu else nn.GELU,
            norm_layer=LayerNorm,
        )
        self._register_pixel_stats(card)
        p = int(vision.patch_size)  # type: ignore[arg-type]
        self.feature_strides = {"patch": p}
        self.feature_channels = {"patch": vision.width}

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised pixels -> transformer output ``(B, 1 + gh * gw, width)`` and the grid ``(gh, gw)``."""
        x = self.conv1(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_grid_embedding(self.positional_embedding, self.grid_size, grid).to(x.dtype)
        x = self.patch_dropout(x)
        x = self.ln_pre(x)
        return self.transformer(x), grid

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.ln_post(tokens) @ self.proj

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One pass: class-token embedding ``(B, embed_dim)`` and ``{"patch": (B, width, H/p, W/p)}``."""
        tokens, (gh, gw) = self._tokens(x)
        patch = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
        return self._project(tokens[:, 0]), {"patch": patch}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised ``(B, 3, H, W)`` -> ``{"patch": (B, width, H/p, W/p)}``."""
        return self.forward_with_features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` -> class-token embedding ``(B, embed_dim)``, unnormalised."""
        tokens, _ = self._tokens(x)
        return self._project(tokens[:, 0])

    def pool_regions(
        self, patch: torch.Tensor, boxes_per_image: Sequence[torch.Tensor], output_size: int = 14
    ) -> torch.Tensor:
        """RoIAlign on the patch-token map, mean over the RoI grid, final LayerNorm + projection.

        Args:
            patch: ``(B, width, H/p, W/p)`` from :meth:`features`.
            boxes_per_image: B tensors ``(K_i, 4)`` xyxy, absolute pixels of the input image.
        Returns:
            ``(sum K_i, embed_dim)`` unnormalised.
        """
        rois = self._roi_align(patch, boxes_per_image, output_size, self.feature_strides["patch"])
        if rois.shape[0] == 0:
            return patch.new_zeros((0, self.output_dim))
        return self.embed_rois(rois)

    def embed_rois(self, rois: torch.Tensor) -> torch.Tensor:
        """``(R, width, g, g)`` RoIAligned patch tokens -> ``(R, embed_dim)`` unnormalised (mean, final
        LayerNorm, projection)."""
        return self._project(rois.mean(dim=(2, 3)))


ImageEncoder = ResNetImageEncoder | ViTImageEncoder


def build_image_encoder(card: ModelCard) -> ImageEncoder:
    """The image tower a card describes, randomly initialised (open_clip's initialisation)."""
    if card.vision.kind == "resnet":
        return ResNetImageEncoder(card)
    return ViTImageEncoder(card)
