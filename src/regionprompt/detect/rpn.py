"""A class-agnostic region proposal network: narrow ResNet + FPN + torchvision's RPN.

RegionCLIP's "off-the-shelf localizer": trained on boxes of *base* concepts without their labels, it
proposes boxes for whatever looks like an object, and its recall on novel concepts shows whether
objectness generalises. The parts are torchvision's (``AnchorGenerator``, ``RPNHead``,
``RegionProposalNetwork`` for target assignment and losses, ``FeaturePyramidNetwork``) on a small
ResNet of :class:`~torchvision.models.resnet.BasicBlock` stages that runs on a CPU.

The network works at one square resolution, its card's ``image_size``: :meth:`ProposalNetwork.propose`
resizes any ``(B, 3, H, W)`` input to it (non-uniformly, so no padding is ever proposed) and maps
the boxes back to the input's pixels.

Saved form (a directory): ``model.safetensors`` + ``card.json`` (an :class:`RpnCard` with the sha256
of the weights).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.models.resnet import BasicBlock
from torchvision.ops import (
    FeaturePyramidNetwork,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from regionprompt.card_json import (
    card_to_dict,
    card_to_json,
    parse_card_json,
    tuples_like,
)
from regionprompt.errors import CheckpointError
from regionprompt.proposals import Proposals

# CARD_FILE and WEIGHTS_FILE: the folder's file names, imported from here by the RPN tests.
from regionprompt.model_dir import (  # noqa: F401
    CARD_FILE,
    WEIGHTS_FILE,
    load_model_dir,
    save_model_dir,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RpnCard:
    """Everything needed to rebuild a :class:`ProposalNetwork`, plus provenance.

    Sizes are in pixels of the network's square input (``image_size``). The defaults suit EmojiWorld's
    320 px canvas, whose objects have a longer side of 16..160 px: one FPN level per octave from
    stride 4, two anchor scales per level (half an octave apart) so every object size is within a
    factor 1.19 of an anchor.
    """

    name: str = "rpn-small"
    image_size: int = 320  # square side the network resizes every input to (multiple of 32)
    widths: tuple[int, ...] = (24, 48, 96, 192)  # channels of the ResNet stages at strides 4, 8, 16, 32
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # BasicBlocks per stage
    fpn_channels: int = 64  # channels of every FPN level and of the RPN head
    # One tuple per FPN level (strides 4, 8, 16, 32, then one more for an extra max-pooled level at 64).
    anchor_sizes: tuple[tuple[float, ...], ...] = ((16.0, 22.6), (32.0, 45.3), (64.0, 90.5), (128.0, 181.0))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width of the anchors at every level
    fg_iou_thresh: float = 0.7  # training: anchors with IoU >= this to a box are positives
    bg_iou_thresh: float = 0.3  # training: anchors with IoU < this to every box are negatives
    batch_size_per_image: int = 256  # training: anchors sampled per image for the loss
    positive_fraction: float = 0.5  # training: at most this fraction of the sampled anchors are positives
    pre_nms_top_n: int = 500  # inference: best anchors kept per FPN level before NMS
    post_nms_top_n: int = 1000  # inference: most proposals ever returned per image
    # inference: class-agnostic NMS IoU over the proposals of all levels. On EmojiWorld val, 0.7 gave the best
    # AR@100 (0.5: -6 points, 0.6: -1, 0.8: -0.2; 0.8 was +1.5 at AR@300)
    nms_thresh: float = 0.7
    min_size: float = 2.0  # inference: proposals with a side shorter than this (input-size pixels) are dropped
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    weights_hash: str | None = None  # sha256 of the weights saved next to this card (set by save())
    training: Mapping[str, Any] = field(default_factory=dict)  # recipe, data, time (free form)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # measured results (free form)

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 32 or self.image_size % 32:
            problems.append(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if len(self.widths) != 4 or len(self.blocks) != 4 or min(self.widths) < 1 or min(self.blocks) < 1:
            problems.append(f"widths and blocks need 4 positive ints (strides 4..32), got {self.widths} / {self.blocks}")
        if len(self.anchor_sizes) not in (4, 5) or not all(self.anchor_sizes):
            problems.append(f"anchor_sizes needs one non-empty tuple per FPN level (4, or 5 with the extra "
                            f"level), got {len(self.anchor_sizes)}")
        elif len({len(s) for s in self.anchor_sizes}) != 1:
            problems.append("every FPN level needs the same number of anchor sizes (the head is shared)")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            problems.append(f"aspect_ratios must be positive, got {self.aspect_ratios}")
        if not 0 <= self.bg_iou_thresh <= self.fg_iou_thresh <= 1:
            problems.append(f"need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got {self.bg_iou_thresh} / {self.fg_iou_thresh}")
        if not 0 < self.nms_thresh <= 1:
            problems.append(f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        if min(self.fpn_channels, self.pre_nms_top_n, self.post_nms_top_n, self.batch_size_per_image) < 1:
            problems.append("fpn_channels, pre/post_nms_top_n and batch_size_per_image must be positive")
        if problems:
            raise CheckpointError(f"invalid RPN card {self.name!r}: " + "; ".join(problems))

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios)

    def with_updates(self, **changes: Any) -> RpnCard:
        """A copy with some fields replaced (the card is frozen)."""
        return replace(self, **changes)

    def same_architecture(self, other: RpnCard) -> bool:
        """True when both cards build identical parameter trees."""
        keys = ("widths", "blocks", "fpn_channels", "anchor_sizes", "aspect_ratios")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_json(self) -> str:
        return card_to_json(card_to_dict(self))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> RpnCard:
        """Parse a card written by :meth:`to_json`; lists become the tuples the fields declare."""
        data = parse_card_json(text, source=source, what="an RPN card")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source}: not an RPN card (unknown fields {unknown})")
        defaults = cls()
        values = {k: tuples_like(getattr(defaults, k), v) for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise CheckpointError(f"{source}: malformed RPN card ({exc})") from None


class NarrowResNet(nn.Module):
    """A small ResNet: a two-conv stride-4 stem, then four stages of BasicBlocks.

    ``(B, 3, S, S)`` normalised images -> ``OrderedDict`` ``c2..c5`` of ``(B, widths[i], S / 2**(i+2), ...)``.
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        stem_mid = max(8, widths[0] // 2)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_mid, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_mid, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_ch = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or in_ch != width:
                downsample = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
            layers = [BasicBlock(in_ch, width, stride, downsample)]
            layers += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for stage in self.stages:
            for block in stage:
                # Residual branches start at zero: each block begins as an identity, which trains
                # stably from random init at small batch sizes.
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[f"c{i + 2}"] = x
        return out


class ProposalNetwork(nn.Module):
    """Class-agnostic proposals for any image (implements :class:`~regionprompt.proposals.ProposalSource`).

    Use :meth:`propose` for inference and :meth:`losses` for training; ``forward`` is not used.
    """

    def __init__(self, card: RpnCard | None = None) -> None:
        super().__init__()
        card = card or RpnCard()
        self.card = card
        self.backbone = NarrowResNet(card.widths, card.blocks)
        extra = LastLevelMaxPool() if len(card.anchor_sizes) == 5 else None
        self.fpn = FeaturePyramidNetwork(list(card.widths), card.fpn_channels, extra_blocks=extra)
        self.rpn = RegionProposalNetwork(
            AnchorGenerator(card.anchor_sizes, (card.aspect_ratios,) * len(card.anchor_sizes)),
            RPNHead(card.fpn_channels, card.anchors_per_location),
            fg_iou_thresh=card.fg_iou_thresh,
            bg_iou_thresh=card.bg_iou_thresh,
            batch_size_per_image=card.batch_size_per_image,
            positive_fraction=card.positive_fraction,
            # Selection is ours (see _select); these only satisfy the constructor.
            pre_nms_top_n={"training": card.pre_nms_top_n, "testing": card.pre_nms_top_n},
            post_nms_top_n={"training": card.post_nms_top_n, "testing": card.post_nms_top_n},
            nms_thresh=card.nms_thresh,
        )
        self.register_buffer("mean", torch.tensor(card.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(card.image_std).view(1, 3, 1, 1), persistent=False)

    # ---- shared forward pieces -------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, S, S)`` normalised, S = the card's image size."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
        size = self.card.image_size
        x = images.to(self.mean.device, torch.float32)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[int]]:
        """Normalised ``(B, 3, S, S)`` -> objectness logits ``(B*A_total, 1)``, box deltas ``(B*A_total, 4)``,
        anchors (one ``(A_total, 4)`` xyxy tensor per image, input-size pixels) and anchors per level."""
        features = list(self.fpn(self.backbone(x)).values())
        objectness, deltas = self.rpn.head(features)
        size = self.card.image_size
        anchors = self.rpn.anchor_generator(ImageList(x, [(size, size)] * x.shape[0]), features)
        per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        return objectness, deltas, anchors, per_level

    # ---- training --------------------------------------------------------------------------------

    def losses(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """RPN losses for ``(B, 3, H, W)`` images in [0, 1] and one ``(N_i, 4)`` xyxy pixel box tensor per
        image (pixels of the given images; ``N_i`` may be 0). Returns ``loss_objectness`` (BCE over sampled
        anchors) and ``loss_box`` (smooth L1 of positive anchors' deltas)."""
        if len(boxes) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(boxes)} box tensors")
        h, w = images.shape[-2:]
        size = self.card.image_size
        scale = torch.tensor([size / w, size / h, size / w, size / h])
        targets = [{"boxes": b.reshape(-1, 4).float().cpu() * scale} for b in boxes]
        targets = [{"boxes": t["boxes"].to(self.mean.device)} for t in targets]
        objectness, deltas, anchors, _ = self._head(self._prepare(images))
        labels, matched = self.rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = self.rpn.box_coder.encode(matched, anchors)
        loss_objectness, loss_box = self.rpn.compute_loss(objectness, deltas, labels, regression_targets)
        return {"loss_objectness": loss_objectness, "loss_box": loss_box}

    # ---- inference -------------------------------------------------------------------------------

    @torch.no_grad()
    def propose(self, images: torch.Tensor, *, max_proposals: int = 300) -> list[Proposals]:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> one :class:`Proposals` per image: at most
        ``min(max_proposals, card.post_nms_top_n)`` boxes, xyxy pixels of the *given* images, inside them,
        objectness = sigmoid probability, sorted descending."""
        if max_proposals < 1:
            raise ValueError(f"max_proposals must be positive, got {max_proposals}")
        was_training = self.training
        self.eval()
        try:
            objectness, deltas, anchors, per_level = self._head(self._prepare(images))
        finally:
            self.train(was_training)
        batch = images.shape[0]
        logits = objectness.view(batch, -1)
        deltas = deltas.view(batch, -1, 4)
        h, w = images.shape[-2:]
        size = self.card.image_size
        scale = torch.tensor([w / size, h / size, w / size, h / size], device=deltas.device)
        out = []
        for image_logits, image_deltas, image_anchors in zip(logits, deltas, anchors):
            boxes, scores = self._select(image_logits, image_deltas, image_anchors, per_level, max_proposals)
            boxes = clip_boxes_to_image(boxes * scale, (int(h), int(w)))
            out.append(Proposals(boxes.float().cpu(), scores.float().cpu()))
        return out

    def _select(self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, per_level: list[int],
                max_proposals: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's ``(A,)`` logits, ``(A, 4)`` deltas and ``(A, 4)`` anchors -> boxes (input-size pixels)
        and probabilities: the best ``pre_nms_top_n`` anchors of each level (decoded only those: cheaper),
        clipped, small ones dropped, then one NMS over all levels (not torchvision's per-level NMS: an
        object found at two levels would otherwise spend two of the proposal budget)."""
        card = self.card
        picks = []
        offset = 0
        for count in per_level:
            k = min(card.pre_nms_top_n, count)
            picks.append(logits[offset : offset + count].topk(k).indices + offset)
            offset += count
        index = torch.cat(picks)
        boxes = self.rpn.box_coder.decode_single(deltas[index], anchors[index])
        boxes = clip_boxes_to_image(boxes, (card.image_size, card.image_size))
        scores = torch.sigmoid(logits[index])
        keep = remove_small_boxes(boxes, card.min_size)
        boxes, scores = boxes[keep], scores[keep]
        keep = nms(boxes, scores, card.nms_thresh)
        keep = keep[: min(max_proposals, card.post_nms_top_n)]
        return boxes[keep], scores[keep]

    # ---- persistence -----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> RpnCard:
        """Write ``model.safetensors`` and ``card.json`` (with the weights hash), each atomically."""
        self.card = save_model_dir(directory, self.state_dict(), self.card)
        return self.card

    @classmethod
    def load(cls, directory: str | Path) -> ProposalNetwork:
        """Load a directory written by :meth:`save`; eval mode.

        Raises:
            CheckpointError: the folder, its card or its weights are missing, unreadable, of another
                architecture, or do not match the card's hash.
        """
        return load_model_dir(directory, RpnCard, cls, kind="RPN")
