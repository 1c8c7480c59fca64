"""detectron2 RPN state dicts (``rpn_*.pth`` releases, RegionCLIP's ``offline_*`` copy) -> a
:class:`~regionprompt.detect.detectron2_rpn.Detectron2RPN`: the card from tensor names and shapes, then the
tensors checked against the rebuilt network (key layout in that module's docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from regionprompt.detect.detectron2_rpn import C4_ANCHOR_SIZES, FPN_ANCHOR_SIZES, Detectron2RPN, Detectron2RpnCard
from regionprompt.errors import CheckpointError
from regionprompt.interop.checkpoints import count_blocks


def card_from_state(state: Mapping[str, torch.Tensor], source: str, **overrides: Any) -> Detectron2RpnCard:
    """The card of a detectron2 RPN state dict (keys ``backbone.*`` + ``proposal_generator.*``), from
    tensor names and shapes; ``overrides`` set the fields weights cannot show (``stride_in_1x1``, pixel
    statistics, test sizes, NMS).

    Raises:
        CheckpointError: not a ResNet C4/FPN + StandardRPNHead state dict, or anchors that do not fit the head.
    """
    if "backbone.bottom_up.stem.conv1.weight" in state:
        arch, resnet = "fpn", "backbone.bottom_up."
    elif "backbone.stem.conv1.weight" in state:
        arch, resnet = "c4", "backbone."
    elif "backbone.bottom_up.conv1.weight" in state or "backbone.conv1.weight" in state:
        raise CheckpointError(f"{source}: the RPN runs on a CLIP ModifiedResNet backbone (e.g. "
                              "rpn_lvis_1203_clipbackbone); only detectron2 ResNet-50 C4/FPN RPNs are supported")
    else:
        sample = ", ".join(sorted(state)[:4])
        raise CheckpointError(f"{source}: no detectron2 RPN backbone (expected backbone.bottom_up.stem.conv1.weight "
                              f"for R50-FPN or backbone.stem.conv1.weight for R50-C4; keys start: {sample} ...)")
    head = "proposal_generator.rpn_head."
    if f"{head}objectness_logits.weight" not in state:
        raise CheckpointError(f"{source}: a detectron2 backbone without an RPN head "
                              f"({head}objectness_logits.weight missing)")
    if f"{resnet}stem.conv1.norm.running_mean" not in state:
        raise CheckpointError(f"{source}: the ResNet has no BatchNorm statistics (GroupNorm or no norm): only "
                              "FrozenBN / BN / SyncBN backbones are supported")
    n_stages = 4 if arch == "fpn" else 3
    stages = [f"{resnet}res{i + 2}." for i in range(n_stages)]
    missing = [s for s in stages if f"{s}0.conv1.weight" not in state]
    if missing:
        raise CheckpointError(f"{source}: ResNet stage(s) {', '.join(m.rstrip('.') for m in missing)} missing")
    if f"{head}conv.weight" in state:
        head_convs = 1
    else:  # RPN.CONV_DIMS with several entries: proposal_generator.rpn_head.conv.conv0.weight, conv1, ...
        head_convs = len({k.split(".")[3] for k in state if k.startswith(f"{head}conv.conv")})
        if not head_convs:
            raise CheckpointError(f"{source}: the RPN head has no 3x3 conv ({head}conv.weight missing)")
    card = Detectron2RpnCard(
        name=Path(source).stem,
        arch=arch,
        stem_width=int(state[f"{resnet}stem.conv1.weight"].shape[0]),
        bottleneck_widths=tuple(int(state[f"{s}0.conv1.weight"].shape[0]) for s in stages),
        out_widths=tuple(int(state[f"{s}0.conv3.weight"].shape[0]) for s in stages),
        blocks=tuple(count_blocks(state, s) for s in stages),
        fpn_channels=int(state["backbone.fpn_lateral2.weight"].shape[0]) if arch == "fpn" else 256,
        fpn_norm=arch == "fpn" and "backbone.fpn_lateral2.norm.weight" in state,
        head_convs=head_convs,
        anchor_sizes=FPN_ANCHOR_SIZES if arch == "fpn" else C4_ANCHOR_SIZES,
        pre_nms_topk=1000 if arch == "fpn" else 6000,
        training={"source": str(source)},
    )
    try:
        card = card.with_updates(**overrides)
    except TypeError as exc:
        raise CheckpointError(f"invalid detectron2 RPN settings: {exc}") from None
    anchors = int(state[f"{head}objectness_logits.weight"].shape[0])
    if anchors != card.anchors_per_location:
        raise CheckpointError(
            f"{source}: the RPN head predicts {anchors} anchors per location, but {len(card.anchor_sizes[0])} "
            f"sizes x {len(card.aspect_ratios)} aspect ratios give {card.anchors_per_location} "
            f"(anchor sizes {card.anchor_sizes})")
    return card


def rpn_from_state(state: Mapping[str, torch.Tensor], source: str, **overrides: Any) -> Detectron2RPN:
    """A :class:`Detectron2RPN` holding exactly the tensors of a detectron2 RPN state dict.

    ``state`` keys are ``backbone.*`` and ``proposal_generator.*`` (other keys, e.g. ``roi_heads.*`` of a
    full Mask R-CNN, are ignored); BN step counters are dropped (FrozenBN has none).

    Raises:
        CheckpointError: see :func:`card_from_state`; a tensor of another shape, or missing tensors.
    """
    card = card_from_state(state, source, **overrides)
    model = Detectron2RPN(card)
    expected = model.state_dict()
    wanted = {k: v for k, v in state.items()
              if k.startswith(("backbone.", "proposal_generator.")) and not k.endswith("num_batches_tracked")}
    mismatched = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} expected"
                  for k, v in wanted.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in wanted]
    unexpected = [k for k in wanted if k not in expected]
    if mismatched or missing or unexpected:
        parts = [f"{len(mismatched)} tensors of another shape (e.g. {'; '.join(mismatched[:2])})" if mismatched else "",
                 f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else ""]
        raise CheckpointError(f"{source}: not a detectron2 {card.arch.upper()} RPN of the inferred shape: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in wanted.items()})
    return model.eval()


__all__ = ["card_from_state", "rpn_from_state"]
