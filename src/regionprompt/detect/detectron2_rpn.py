"""A detectron2-layout region proposal network in plain PyTorch: ResNet (C4 or FPN) + ``StandardRPNHead``.

RegionCLIP localises with an "offline" RPN trained by detectron2 (its ``rpn_*.pth`` releases, or the
``offline_backbone.*`` / ``offline_proposal_generator.*`` copy inside a RegionCLIP checkpoint). This module
rebuilds that network without detectron2, with module names chosen so that ``state_dict()`` keys are
exactly detectron2's (after the ``offline_`` prefix is dropped)::

    backbone.bottom_up.stem.conv1.weight          FPN: the ResNet under ``bottom_up``
    backbone.bottom_up.stem.conv1.norm.{weight,bias,running_mean,running_var}   (FrozenBN)
    backbone.bottom_up.res2.0.shortcut.weight / .shortcut.norm.*   res2.0.conv1/conv2/conv3 (+ .norm.*)
    backbone.fpn_lateral{2..5}.weight/bias, backbone.fpn_output{2..5}.weight/bias   (+ .norm.* if FPN.NORM)
    backbone.stem.conv1.weight, backbone.res2..res4.*                          C4: the ResNet itself
    proposal_generator.rpn_head.conv.weight/bias  (or conv.conv0, conv.conv1 ... for RPN.CONV_DIMS [-1, -1])
    proposal_generator.rpn_head.objectness_logits.weight/bias   (A, C, 1, 1)
    proposal_generator.rpn_head.anchor_deltas.weight/bias       (4A, C, 1, 1)

Inference follows detectron2 (``ResizeShortestEdge`` 800 / 1333, BGR 0..255 minus ``PIXEL_MEAN`` over
``PIXEL_STD``, zero padding to the backbone's size divisibility, ``DefaultAnchorGenerator`` with offset 0,
``Box2BoxTransform`` with weights (1, 1, 1, 1), ``find_top_rpn_proposals``: top ``pre_nms_topk`` per level,
clip, drop empty boxes, NMS per level, keep ``post_nms_topk``). Objectness is ``sigmoid(logit)``, the value
RegionCLIP multiplies into its scores (``MULTIPLY_RPN_SCORE``).

Which ResNet variant a file holds cannot all be read from its tensors: ``stride_in_1x1`` (True for the
MSRA/caffe ImageNet weights RegionCLIP's RPN configs start from) and the pixel statistics are card fields.

Reading detectron2's own files (a state dict -> card + model) is :mod:`regionprompt.interop.detectron2`.

Saved form (a directory): ``model.safetensors`` (keys as above) + ``card.json`` (a :class:`Detectron2RpnCard`
whose ``kind`` is ``"detectron2-rpn"``, which is how :func:`load_proposal_folder` tells it from our own
:class:`~regionprompt.detect.rpn.ProposalNetwork`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import FrozenBatchNorm2d, batched_nms

from regionprompt.card_json import (
    card_to_dict,
    card_to_json,
    parse_card_json,
    tuples_like,
)
from regionprompt.errors import CheckpointError
from regionprompt.model_dir import CARD_FILE, load_model_dir, save_model_dir
from regionprompt.proposals import Proposals

RPN_KIND = "detectron2-rpn"
#: detectron2's default PIXEL_MEAN / PIXEL_STD (BGR, 0..255): the MSRA/caffe ResNet statistics.
DETECTRON2_PIXEL_MEAN = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD = (1.0, 1.0, 1.0)
#: Base-RCNN-FPN.yaml: one anchor size per level p2..p6; Base-RCNN-C4.yaml (detectron2 default): all on res4.
FPN_ANCHOR_SIZES = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
C4_ANCHOR_SIZES = ((32.0, 64.0, 128.0, 256.0, 512.0),)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: Box2BoxTransform's clamp on dw / dh: exp() of it is the largest allowed scale-up, 1000 / 16.
SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class Detectron2RpnCard:
    """Architecture and inference settings of a :class:`Detectron2RPN` (sizes in input pixels).

    ``blocks`` and the widths are read from a checkpoint's tensor shapes (:func:`card_from_state`);
    the rest are detectron2 config values that weights do not reveal, with RegionCLIP's defaults.
    """

    kind: str = RPN_KIND
    name: str = "detectron2-rpn"
    arch: str = "fpn"  # "fpn" (R50-FPN: RPN on p2..p6) or "c4" (RPN on res4)
    stem_width: int = 64  # stem conv1 output channels (RESNETS.STEM_OUT_CHANNELS)
    bottleneck_widths: tuple[int, ...] = (64, 128, 256, 512)  # conv1/conv2 channels of res2.. (C4: 3 stages)
    out_widths: tuple[int, ...] = (256, 512, 1024, 2048)  # conv3 / shortcut channels of res2..
    blocks: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage (R50)
    stride_in_1x1: bool = True  # RESNETS.STRIDE_IN_1X1: MSRA weights put the stride on the 1x1 conv
    fpn_channels: int = 256  # FPN.OUT_CHANNELS (FPN only)
    fpn_norm: bool = False  # FPN.NORM set (e.g. SyncBN for RegionCLIP's LSJ RPN): convs without bias + norm
    head_convs: int = 1  # 3x3 conv+ReLU layers of the RPN head (RPN.CONV_DIMS: [-1] -> 1, [-1, -1] -> 2)
    anchor_sizes: tuple[tuple[float, ...], ...] = FPN_ANCHOR_SIZES  # ANCHOR_GENERATOR.SIZES, one tuple per level
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS  # height / width
    input_format: str = "BGR"  # INPUT.FORMAT the network was trained on
    pixel_mean: tuple[float, float, float] = DETECTRON2_PIXEL_MEAN  # 0..255 units, in input_format order
    pixel_std: tuple[float, float, float] = DETECTRON2_PIXEL_STD
    min_size_test: int = 800  # INPUT.MIN_SIZE_TEST: shorter side after resizing
    max_size_test: int = 1333  # INPUT.MAX_SIZE_TEST: longer side cap
    pre_nms_topk: int = 1000  # RPN.PRE_NMS_TOPK_TEST, per level (FPN 1000, C4 6000)
    post_nms_topk: int = 1000  # RPN.POST_NMS_TOPK_TEST
    nms_thresh: float = 0.7  # RPN.NMS_THRESH (RegionCLIP's LVIS zero-shot runs use 0.9)
    min_box_size: float = 0.0  # PROPOSAL_GENERATOR.MIN_SIZE: sides must exceed it (resized-input pixels)
    weights_hash: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)  # provenance (free form)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.kind != RPN_KIND:
            problems.append(f"kind must be {RPN_KIND!r}, got {self.kind!r}")
        stages = 4 if self.arch == "fpn" else 3 if self.arch == "c4" else 0
        if not stages:
            problems.append(f"arch must be 'fpn' or 'c4', got {self.arch!r}")
        elif not len(self.blocks) == len(self.bottleneck_widths) == len(self.out_widths) == stages:
            problems.append(f"arch {self.arch!r} needs {stages} stages of blocks and widths, got "
                            f"{self.blocks} / {self.bottleneck_widths} / {self.out_widths}")
        elif min(self.blocks + self.bottleneck_widths + self.out_widths + (self.stem_width,)) < 1:
            problems.append("blocks and widths must be positive")
        levels = 5 if self.arch == "fpn" else 1
        if len(self.anchor_sizes) != levels or len({len(s) for s in self.anchor_sizes}) != 1:
            problems.append(f"arch {self.arch!r} needs {levels} anchor size tuples of equal length, got {self.anchor_sizes}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            problems.append(f"aspect_ratios must be positive, got {self.aspect_ratios}")
        if self.input_format not in ("BGR", "RGB"):
            problems.append(f"input_format must be 'BGR' or 'RGB', got {self.input_format!r}")
        if min(self.pixel_std) <= 0:
            problems.append(f"pixel_std must be positive, got {self.pixel_std}")
        if not 32 <= self.min_size_test <= self.max_size_test:
            problems.append(f"need 32 <= min_size_test <= max_size_test, got {self.min_size_test} / {self.max_size_test}")
        if min(self.pre_nms_topk, self.post_nms_topk, self.head_convs, self.fpn_channels) < 1:
            problems.append("pre_nms_topk, post_nms_topk, head_convs and fpn_channels must be positive")
        if not 0 < self.nms_thresh <= 1:
            problems.append(f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        if problems:
            raise CheckpointError(f"invalid detectron2 RPN card {self.name!r}: " + "; ".join(problems))

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each level the head runs on: p2..p6 (FPN) or res4 (C4)."""
        return (4, 8, 16, 32, 64) if self.arch == "fpn" else (16,)

    @property
    def size_divisibility(self) -> int:
        """Inputs are zero-padded to a multiple of this (detectron2: FPN 32, a plain ResNet 0)."""
        return 32 if self.arch == "fpn" else 1

    def with_updates(self, **changes: Any) -> Detectron2RpnCard:
        """A copy with some fields replaced (the card is frozen)."""
        return replace(self, **changes)

    def to_json(self) -> str:
        return card_to_json(card_to_dict(self))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> Detectron2RpnCard:
        """Parse a card written by :meth:`to_json` (JSON lists become the declared tuples)."""
        data = parse_card_json(text, source=source, what="a detectron2 RPN card")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown or data.get("kind") != RPN_KIND:
            raise CheckpointError(f"{source}: not a detectron2 RPN card (kind {data.get('kind')!r}, "
                                  f"unknown fields {unknown})")
        defaults = cls()
        values = {k: tuples_like(getattr(defaults, k), v) for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise CheckpointError(f"{source}: malformed detectron2 RPN card ({exc})") from None


# ---- modules (named as detectron2 names them) -------------------------------------------------------


class ConvNorm(nn.Conv2d):
    """detectron2's ``layers.Conv2d``: a conv with an optional ``norm`` child (keys ``conv.norm.*``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, norm: bool = True,
                 bias: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)
        # FrozenBN: at inference a trained BatchNorm/SyncBN computes the same affine map, and
        # torchvision's FrozenBatchNorm2d (eps 1e-5, as detectron2's) drops num_batches_tracked on load.
        self.norm = FrozenBatchNorm2d(out_ch) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x


class BasicStem(nn.Module):
    """7x7 stride-2 conv + FrozenBN + ReLU, then 3x3 stride-2 max pool: ``(B, 3, H, W)`` -> ``(B, C, H/4, W/4)``."""

    def __init__(self, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_ch, 7, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the shape changes (detectron2's BottleneckBlock)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, stride_in_1x1: bool) -> None:
        super().__init__()
        self.shortcut = ConvNorm(in_ch, out_ch, 1, stride=stride) if in_ch != out_ch else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_ch, mid_ch, 1, stride=s1)
        self.conv2 = ConvNorm(mid_ch, mid_ch, 3, stride=s3)
        self.conv3 = ConvNorm(mid_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """``stem`` + stages ``res2``.. (res2 stride 1, later ones stride 2): ``{"res2": (B, C2, H/4, W/4), ...}``."""

    def __init__(self, card: Detectron2RpnCard) -> None:
        super().__init__()
        self.stem = BasicStem(card.stem_width)
        self.stage_names = [f"res{i + 2}" for i in range(len(card.blocks))]
        in_ch = card.stem_width
        for i, (name, count, mid, out) in enumerate(zip(self.stage_names, card.blocks, card.bottleneck_widths,
                                                        card.out_widths)):
            blocks = []
            for b in range(count):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BottleneckBlock(in_ch, mid, out, stride, card.stride_in_1x1))
                in_ch = out
            self.add_module(name, nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class FPN(nn.Module):
    """detectron2's FPN over res2..res5 with ``LastLevelMaxPool``: ``[p2, p3, p4, p5, p6]``, strides 4..64."""

    def __init__(self, card: Detectron2RpnCard) -> None:
        super().__init__()
        self.bottom_up = ResNet(card)
        c = card.fpn_channels
        for level, in_ch in zip(range(2, 6), card.out_widths):
            self.add_module(f"fpn_lateral{level}", ConvNorm(in_ch, c, 1, norm=card.fpn_norm, bias=not card.fpn_norm))
            self.add_module(f"fpn_output{level}", ConvNorm(c, c, 3, norm=card.fpn_norm, bias=not card.fpn_norm))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.bottom_up(x)
        prev = self.fpn_lateral5(feats["res5"])
        results = [self.fpn_output5(prev)]
        for level in (4, 3, 2):
            # Nearest 2x upsampling: inputs are padded to a multiple of 32, so the sizes match exactly.
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{level}")(feats[f"res{level}"]) + top_down
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))  # p6 from p5
        return results


class C4Backbone(ResNet):
    """A plain ResNet up to res4 whose output is the single RPN input level."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [super().forward(x)["res4"]]


class StandardRPNHead(nn.Module):
    """Shared 3x3 conv(s) + ReLU, then 1x1 ``objectness_logits`` (A) and ``anchor_deltas`` (4A) per level."""

    def __init__(self, channels: int, anchors: int, convs: int) -> None:
        super().__init__()
        if convs == 1:
            self.conv: nn.Module = nn.Conv2d(channels, channels, 3, padding=1)
        else:  # detectron2 names a stack conv.conv0, conv.conv1, ...
            self.conv = nn.Sequential()
            for k in range(convs):
                self.conv.add_module(f"conv{k}", nn.Conv2d(channels, channels, 3, padding=1))
        self.objectness_logits = nn.Conv2d(channels, anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            if isinstance(self.conv, nn.Sequential):
                for conv in self.conv:
                    x = F.relu(conv(x))
                t = x
            else:
                t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class _ProposalGenerator(nn.Module):
    """Holds ``rpn_head`` so its keys read ``proposal_generator.rpn_head.*``."""

    def __init__(self, card: Detectron2RpnCard) -> None:
        super().__init__()
        channels = card.fpn_channels if card.arch == "fpn" else card.out_widths[-1]
        self.rpn_head = StandardRPNHead(channels, card.anchors_per_location, card.head_convs)


def cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> torch.Tensor:
    """``(len(sizes) * len(ratios), 4)`` xyxy anchors centred on 0, sizes outer and ratios inner (detectron2's
    order, which the head's channels follow): area ``size**2``, height / width = ratio."""
    rows = []
    for size in sizes:
        area = size**2.0
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(base: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """``(height * width * A, 4)`` anchors of one level, location-major (row, column), anchor index minor."""
    shift_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=base.device)
    shift_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=base.device)
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack((xx, yy, xx, yy), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


# detectron2's Box2BoxTransform with weights (1, 1, 1, 1) and scale clamp log(1000 / 16) is exactly
# torchvision's BoxCoder with those settings (the same one our own RPN decodes with).
_BOX_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=SCALE_CLAMP)


def decode_deltas(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Box2BoxTransform (weights 1, 1, 1, 1): ``(K, 4)`` (dx, dy, dw, dh) on ``(K, 4)`` xyxy anchors -> xyxy."""
    return _BOX_CODER.decode_single(deltas.float(), anchors.float())


class Detectron2RPN(nn.Module):
    """A detectron2 R50-FPN or R50-C4 RPN; implements :class:`~regionprompt.proposals.ProposalSource`."""

    def __init__(self, card: Detectron2RpnCard | None = None) -> None:
        super().__init__()
        card = card or Detectron2RpnCard()
        self.card = card
        self.backbone: nn.Module = FPN(card) if card.arch == "fpn" else C4Backbone(card)
        self.proposal_generator = _ProposalGenerator(card)
        for level, (sizes, stride) in enumerate(zip(card.anchor_sizes, card.strides)):
            self.register_buffer(f"cell_anchors_{level}", cell_anchors(sizes, card.aspect_ratios), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(card.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(card.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def input_size(self) -> int:
        """Square side the zero-shot detector resizes images to before :meth:`propose` (detectron2's test
        shorter side)."""
        return self.card.min_size_test

    # ---- forward pieces -------------------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """detectron2's ``ResizeShortestEdge`` at test time: ``(new_h, new_w)``."""
        card = self.card
        scale = card.min_size_test / min(height, width)
        if max(height, width) * scale > card.max_size_test:
            scale = card.max_size_test / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(B, 3, H, W)`` RGB in [0, 1] -> normalised, zero-padded ``(B, 3, H', W')`` and the unpadded
        resized size ``(h, w)`` (proposals are clipped to it)."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be float (B, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        h, w = self.resized_size(int(images.shape[-2]), int(images.shape[-1]))
        x = images.to(self.pixel_mean.device, torch.float32)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = x * 255.0
        if self.card.input_format == "BGR":
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        d = self.card.size_divisibility
        pad_h, pad_w = (-h) % d, (-w) % d
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # after normalisation, as detectron2's ImageList pads with 0
        return x, (h, w)

    def head_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised padded ``(B, 3, H, W)`` -> per level objectness logits ``(B, A, h, w)`` and deltas ``(B, 4A, h, w)``."""
        return self.proposal_generator.rpn_head(self.backbone(x))

    @torch.no_grad()
    def propose(self, images: torch.Tensor, *, max_proposals: int = 300) -> list[Proposals]:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> one :class:`Proposals` per image, boxes xyxy in pixels of
        ``images`` (objectness = sigmoid of the RPN logit, descending)."""
        card = self.card
        height, width = int(images.shape[-2]), int(images.shape[-1])
        x, (h, w) = self.preprocess(images)
        logits, deltas = self.head_outputs(x)
        batch = x.shape[0]
        level_logits, level_deltas, level_anchors = [], [], []
        for level, (lg, dl) in enumerate(zip(logits, deltas)):
            fh, fw = lg.shape[-2:]
            # (B, A, h, w) -> (B, h*w*A) and (B, 4A, h, w) -> (B, h*w*A, 4): the anchors' order.
            level_logits.append(lg.permute(0, 2, 3, 1).reshape(batch, -1))
            level_deltas.append(dl.view(batch, -1, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))
            base = getattr(self, f"cell_anchors_{level}")
            level_anchors.append(grid_anchors(base, fh, fw, card.strides[level]))
        scale = torch.tensor([width / w, height / h, width / w, height / h])
        out = []
        for i in range(batch):
            boxes, scores = self._select([lg[i] for lg in level_logits], [dl[i] for dl in level_deltas],
                                         level_anchors, (h, w), max_proposals)
            boxes = boxes.cpu() * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            out.append(Proposals(boxes.float(), scores.float().cpu()))
        return out

    def _select(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                image_hw: tuple[int, int], max_proposals: int) -> tuple[torch.Tensor, torch.Tensor]:
        """detectron2's ``find_top_rpn_proposals`` for one image: per level ``(A_l,)`` logits, ``(A_l, 4)``
        deltas and anchors -> xyxy boxes in resized-input pixels and sigmoid scores, sorted descending."""
        card = self.card
        boxes, scores, levels = [], [], []
        for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
            k = min(card.pre_nms_topk, lg.shape[0])
            top, index = lg.topk(k)
            boxes.append(decode_deltas(dl[index], an[index]))
            scores.append(top)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=top.device))
        box, score, level = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        valid = torch.isfinite(box).all(dim=1) & torch.isfinite(score)
        box, score, level = box[valid], score[valid], level[valid]
        h, w = image_hw
        box = torch.stack((box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                           box[:, 3].clamp(0, h)), dim=1)
        keep = ((box[:, 2] - box[:, 0]) > card.min_box_size) & ((box[:, 3] - box[:, 1]) > card.min_box_size)
        box, score, level = box[keep], score[keep], level[keep]
        keep = batched_nms(box, score, level, card.nms_thresh)  # per-level NMS, sorted by score
        keep = keep[: min(card.post_nms_topk, max_proposals)]
        return box[keep], torch.sigmoid(score[keep])

    # ---- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Detectron2RpnCard:
        """Write ``model.safetensors`` (detectron2 keys) and ``card.json`` (with the weights hash), atomically."""
        self.card = save_model_dir(directory, self.state_dict(), self.card)
        return self.card

    @classmethod
    def load(cls, directory: str | Path) -> Detectron2RPN:
        """Load a folder written by :meth:`save`; eval mode. Raises :class:`CheckpointError`."""
        return load_model_dir(directory, Detectron2RpnCard, cls, kind="detectron2 RPN")


def load_proposal_folder(directory: str | Path) -> Any:
    """The proposal network saved in ``directory``: a :class:`Detectron2RPN` when its card's ``kind`` says
    so, else our own :class:`~regionprompt.detect.rpn.ProposalNetwork`."""
    path = Path(directory) / CARD_FILE
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None  # let the loader report the missing or broken card
    if kind == RPN_KIND:
        return Detectron2RPN.load(directory)
    from regionprompt.detect.rpn import ProposalNetwork

    return ProposalNetwork.load(directory)


__all__ = [
    "RPN_KIND",
    "Detectron2RPN",
    "Detectron2RpnCard",
    "load_proposal_folder",
]
