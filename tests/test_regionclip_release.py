"""RegionCLIP's released checkpoints load from local files, exactly, and make a working detector folder.

The synthetic checkpoints below are written with the key layout of the real releases, spelled out here
independently of the code under test (from microsoft/RegionCLIP's modules and detectron2's naming):

* CLIP ModifiedResNet (``detectron2/modeling/backbone/clip_backbone.py``) under ``backbone.`` and
  ``teacher_backbone.``: stem ``conv1..3`` / ``bn1..3``, ``layerN.B.{conv1..3, bn1..3, downsample.0/1}``,
  ``attnpool.{positional_embedding, q/k/v/c_proj}``; every norm a FrozenBN with exactly
  ``weight, bias, running_mean, running_var``;
* the box predictor (``roi_heads.box_predictor.{cls_score, cls_bg_score, bbox_pred}``);
* detectron2's R50-FPN RPN (``offline_backbone.bottom_up.stem.conv1.norm.*``, ``res2.0.shortcut.*``,
  ``fpn_lateral2``, ``fpn_output2``, ``offline_proposal_generator.rpn_head.{conv, objectness_logits,
  anchor_deltas}``) and the C4 variant (``backbone.stem.*``, ``res2..res4``);
* OpenAI's text tower under ``lang_encoder.`` (pretraining checkpoints).

Widths are tiny and every stage has one block, so everything runs in seconds on one CPU thread. Reference
outputs are computed functionally from the raw tensors (not through the modules being tested).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align

from regionprompt.api import Detector
from regionprompt.cli import main
from regionprompt.detect.detectron2_rpn import (
    Detectron2RPN,
    cell_anchors,
)
from regionprompt.errors import CheckpointError, PromptError, RegionPromptError
from regionprompt.interop.detectron2 import rpn_from_state
from regionprompt.interop.regionclip_release import import_regionclip, read_rpn
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.vocabulary import VocabularyCLIP

WIDTH, EMBED, GRID = 8, 32, 7  # stem width 8 -> res5 256 channels, 4 attention heads; 7x7 pool grid (224 px)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
RPN_STEM, RPN_MIDS, RPN_OUTS, FPN_CH = 8, (4, 8, 16, 32), (16, 32, 64, 128), 16


# ---- synthetic releases (the real key layout) ------------------------------------------------------


def _conv(sd: dict, name: str, out: int, inp: int, k: int, g: torch.Generator) -> None:
    sd[name] = torch.randn(out, inp, k, k, generator=g) * (2.0 / (inp * k * k)) ** 0.5


def _frozen_bn(sd: dict, name: str, c: int, g: torch.Generator) -> None:
    # detectron2 FrozenBatchNorm2d buffers: no num_batches_tracked.
    sd[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(c, generator=g)
    sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)


def clip_backbone(prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """RegionCLIP's ModifiedResNet (layers 1,1,1,1) with an attention pool, keys under ``prefix``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    w = WIDTH
    _conv(sd, "conv1.weight", w // 2, 3, 3, g), _frozen_bn(sd, "bn1", w // 2, g)
    _conv(sd, "conv2.weight", w // 2, w // 2, 3, g), _frozen_bn(sd, "bn2", w // 2, g)
    _conv(sd, "conv3.weight", w, w // 2, 3, g), _frozen_bn(sd, "bn3", w, g)
    inplanes = w
    for i, planes in enumerate((w, 2 * w, 4 * w, 8 * w)):
        p = f"layer{i + 1}.0."
        _conv(sd, p + "conv1.weight", planes, inplanes, 1, g), _frozen_bn(sd, p + "bn1", planes, g)
        _conv(sd, p + "conv2.weight", planes, planes, 3, g), _frozen_bn(sd, p + "bn2", planes, g)
        _conv(sd, p + "conv3.weight", planes * 4, planes, 1, g), _frozen_bn(sd, p + "bn3", planes * 4, g)
        _conv(sd, p + "downsample.0.weight", planes * 4, inplanes, 1, g), _frozen_bn(sd, p + "downsample.1", planes * 4, g)
        inplanes = planes * 4
    c = w * 32
    sd["attnpool.positional_embedding"] = torch.randn(GRID * GRID + 1, c, generator=g) / c**0.5
    for proj in ("k_proj", "q_proj", "v_proj"):
        sd[f"attnpool.{proj}.weight"] = torch.randn(c, c, generator=g) / c**0.5
        sd[f"attnpool.{proj}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd["attnpool.c_proj.weight"] = torch.randn(EMBED, c, generator=g) / c**0.5
    sd["attnpool.c_proj.bias"] = 0.1 * torch.randn(EMBED, generator=g)
    return {prefix + k: v for k, v in sd.items()}


def detectron2_rpn(backbone: str, generator: str, seed: int, arch: str = "fpn") -> dict[str, torch.Tensor]:
    """detectron2 R50-FPN (or -C4) RPN with one block per stage, keys under ``backbone`` / ``generator``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    resnet = backbone + ("bottom_up." if arch == "fpn" else "")
    _conv(sd, resnet + "stem.conv1.weight", RPN_STEM, 3, 7, g), _frozen_bn(sd, resnet + "stem.conv1.norm", RPN_STEM, g)
    stages = 4 if arch == "fpn" else 3
    inp = RPN_STEM
    for s in range(stages):
        p = f"{resnet}res{s + 2}.0."
        mid, out = RPN_MIDS[s], RPN_OUTS[s]
        _conv(sd, p + "shortcut.weight", out, inp, 1, g), _frozen_bn(sd, p + "shortcut.norm", out, g)
        _conv(sd, p + "conv1.weight", mid, inp, 1, g), _frozen_bn(sd, p + "conv1.norm", mid, g)
        _conv(sd, p + "conv2.weight", mid, mid, 3, g), _frozen_bn(sd, p + "conv2.norm", mid, g)
        _conv(sd, p + "conv3.weight", out, mid, 1, g), _frozen_bn(sd, p + "conv3.norm", out, g)
        inp = out
    if arch == "fpn":
        for level, ch in zip(range(2, 6), RPN_OUTS):
            _conv(sd, f"{backbone}fpn_lateral{level}.weight", FPN_CH, ch, 1, g)
            sd[f"{backbone}fpn_lateral{level}.bias"] = 0.1 * torch.randn(FPN_CH, generator=g)
            _conv(sd, f"{backbone}fpn_output{level}.weight", FPN_CH, FPN_CH, 3, g)
            sd[f"{backbone}fpn_output{level}.bias"] = 0.1 * torch.randn(FPN_CH, generator=g)
    head_ch, anchors = (FPN_CH, 3) if arch == "fpn" else (RPN_OUTS[2], 15)
    h = generator + "rpn_head."
    _conv(sd, h + "conv.weight", head_ch, head_ch, 3, g)
    sd[h + "conv.bias"] = 0.1 * torch.randn(head_ch, generator=g)
    # Inputs in 0..255 (std 1) make activations in the thousands: small head weights keep logits and
    # deltas in a realistic range (logits O(1), deltas O(0.1)).
    sd[h + "objectness_logits.weight"] = 1e-4 * torch.randn(anchors, head_ch, 1, 1, generator=g)
    sd[h + "objectness_logits.bias"] = torch.randn(anchors, generator=g)
    sd[h + "anchor_deltas.weight"] = 1e-5 * torch.randn(4 * anchors, head_ch, 1, 1, generator=g)
    sd[h + "anchor_deltas.bias"] = 0.01 * torch.randn(4 * anchors, generator=g)
    return sd


def box_predictor(classes: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "roi_heads.box_predictor.cls_score.weight": torch.randn(classes, EMBED, generator=g),
        "roi_heads.box_predictor.cls_bg_score.weight": 0.3 * torch.randn(1, EMBED, generator=g),
        "roi_heads.box_predictor.bbox_pred.weight": 0.001 * torch.randn(4, EMBED, generator=g),
        "roi_heads.box_predictor.bbox_pred.bias": torch.zeros(4),
    }


def pretrained_release() -> dict[str, torch.Tensor]:
    """A PretrainFastRCNN state dict: student, teacher and the offline R50-FPN RPN."""
    return {**clip_backbone("backbone.", 1), **clip_backbone("teacher_backbone.", 2),
            **detectron2_rpn("offline_backbone.", "offline_proposal_generator.", 3)}


@pytest.fixture(scope="module")
def release_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finetuned-style checkpoint ({"model": ..., "iteration"}), embeddings for the COCO names, and an
    rpn_*.pth release stored as numpy arrays, as detectron2 pickles hold them."""
    root = tmp_path_factory.mktemp("release")
    state = {**pretrained_release(), **box_predictor(48, 4)}
    ckpt = root / "regionclip_finetuned-coco_rn50.pth"
    torch.save({"model": state, "iteration": 89999}, ckpt)
    emb = torch.randn(80, EMBED, generator=torch.Generator().manual_seed(5)) * 3
    emb_path = root / "coco_80_cls_emb.pth"
    torch.save(emb, emb_path)
    rpn_state = detectron2_rpn("backbone.", "proposal_generator.", 6)
    rpn_state["roi_heads.box_head.fc1.weight"] = torch.zeros(2, 2)  # a full Mask R-CNN file: ignored
    rpn_path = root / "rpn_lvis_866.pth"
    torch.save({"model": {k: v.numpy() for k, v in rpn_state.items()}, "__author__": "test"}, rpn_path)
    return {"root": root, "state": state, "ckpt": ckpt, "emb": emb, "emb_path": emb_path,
            "rpn_state": rpn_state, "rpn_path": rpn_path}


@pytest.fixture(scope="module")
def coco_names(shared_data) -> tuple:
    path = shared_data / "metadata" / "coco80_categories.json"
    return path, [c["name"] for c in json.loads(path.read_text())]


# ---- functional references computed from the raw tensors ------------------------------------------


def ref_bn(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    scale = sd[f"{name}.weight"] / torch.sqrt(sd[f"{name}.running_var"] + 1e-5)
    shift = sd[f"{name}.bias"] - sd[f"{name}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def ref_clip_block(x: torch.Tensor, sd: dict, p: str, stride: int) -> torch.Tensor:
    out = F.relu(ref_bn(F.conv2d(x, sd[p + "conv1.weight"]), sd, p + "bn1"))
    out = F.relu(ref_bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), sd, p + "bn2"))
    if stride > 1:
        out = F.avg_pool2d(out, stride)  # CLIP's anti-aliased stride
    out = ref_bn(F.conv2d(out, sd[p + "conv3.weight"]), sd, p + "bn3")
    identity = F.avg_pool2d(x, stride) if stride > 1 else x
    identity = ref_bn(F.conv2d(identity, sd[p + "downsample.0.weight"]), sd, p + "downsample.1")
    return F.relu(out + identity)


def ref_region_embeddings(sd: dict, prefix: str, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """RegionCLIP's C4 region path from raw tensors: CLIP ResNet to res4, ROIAlignV2 14x14 at 1/16, res5,
    attention pool (by hand), L2-normalised. ``pixels`` (1, 3, S, S) in [0, 1]; boxes (K, 4) in its pixels."""
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    x = (pixels - CLIP_MEAN) / CLIP_STD
    for i, stride in ((1, 2), (2, 1), (3, 1)):
        x = F.relu(ref_bn(F.conv2d(x, sd[f"conv{i}.weight"], stride=stride, padding=1), sd, f"bn{i}"))
    x = F.avg_pool2d(x, 2)
    for layer, stride in ((1, 1), (2, 2), (3, 2)):
        x = ref_clip_block(x, sd, f"layer{layer}.0.", stride)
    rois = roi_align(x, [boxes], output_size=14, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    x = ref_clip_block(rois, sd, "layer4.0.", 2)  # (K, C, 7, 7)
    tokens = x.flatten(2).permute(0, 2, 1)  # (K, 49, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + sd["attnpool.positional_embedding"]
    q = tokens[:, :1] @ sd["attnpool.q_proj.weight"].T + sd["attnpool.q_proj.bias"]
    k = tokens @ sd["attnpool.k_proj.weight"].T + sd["attnpool.k_proj.bias"]
    v = tokens @ sd["attnpool.v_proj.weight"].T + sd["attnpool.v_proj.bias"]
    heads = x.shape[1] // 64
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, 64).transpose(1, 2)
    attn = (split(q) @ split(k).transpose(-1, -2) / 8.0).softmax(dim=-1)
    out = (attn @ split(v)).transpose(1, 2).reshape(x.shape[0], -1)
    out = out @ sd["attnpool.c_proj.weight"].T + sd["attnpool.c_proj.bias"]
    return F.normalize(out, dim=-1)


def ref_rpn_logits(sd: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """detectron2 R50-FPN RPN objectness logits p2..p6 from raw tensors (MSRA: stride in the 1x1 conv)."""
    r = "backbone.bottom_up."
    x = F.relu(ref_bn(F.conv2d(x, sd[r + "stem.conv1.weight"], stride=2, padding=3), sd, r + "stem.conv1.norm"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = {}
    for s in range(4):
        p, stride = f"{r}res{s + 2}.0.", 1 if s == 0 else 2
        out = F.relu(ref_bn(F.conv2d(x, sd[p + "conv1.weight"], stride=stride), sd, p + "conv1.norm"))
        out = F.relu(ref_bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), sd, p + "conv2.norm"))
        out = ref_bn(F.conv2d(out, sd[p + "conv3.weight"]), sd, p + "conv3.norm")
        x = F.relu(out + ref_bn(F.conv2d(x, sd[p + "shortcut.weight"], stride=stride), sd, p + "shortcut.norm"))
        feats[s + 2] = x

    def conv(name: str, t: torch.Tensor, pad: int) -> torch.Tensor:
        return F.conv2d(t, sd[f"backbone.{name}.weight"], sd[f"backbone.{name}.bias"], padding=pad)

    prev = conv("fpn_lateral5", feats[5], 0)
    levels = [conv("fpn_output5", prev, 1)]
    for level in (4, 3, 2):
        prev = conv(f"fpn_lateral{level}", feats[level], 0) + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        levels.insert(0, conv(f"fpn_output{level}", prev, 1))
    levels.append(levels[-1][:, :, ::2, ::2])  # p6: max pool with kernel 1, stride 2
    h = "proposal_generator.rpn_head."
    return [F.conv2d(F.relu(F.conv2d(t, sd[h + "conv.weight"], sd[h + "conv.bias"], padding=1)),
                     sd[h + "objectness_logits.weight"], sd[h + "objectness_logits.bias"]) for t in levels]


def photo(shared_data) -> Image.Image:
    return Image.open(shared_data / "hf_two_cats" / "000000039769.png").convert("RGB")


# ---- the CLIP image tower --------------------------------------------------------------------------


def test_backbone_and_teacher_map_one_to_one(release_files: dict, coco_names: tuple) -> None:
    names_path, names = coco_names
    state = release_files["state"]
    for teacher, prefix in ((False, "backbone."), (True, "teacher_backbone.")):
        parts = import_regionclip(release_files["ckpt"], embeddings=release_files["emb_path"], names=names_path,
                                  teacher=teacher, input_size=224)
        model = parts.clip.state_dict()
        raw = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        assert len(raw) == 3 * 5 + 4 * 20 + 9  # stem (conv + 4 FrozenBN buffers) x3, 4 blocks x 4 (conv + BN), attnpool
        for key, tensor in raw.items():
            assert torch.equal(model["visual." + key], tensor), key
        visual = [k for k in model if k.startswith("visual.") and not k.endswith("num_batches_tracked")]
        assert len(visual) == len(raw)
        assert parts.clip.card.vision.layers == (1, 1, 1, 1) and parts.clip.card.vision.width == WIDTH
        assert parts.clip.card.embed_dim == EMBED and parts.clip.card.vision.image_size == GRID * 32
    # The student's learned background is cls_bg_score; the teacher (plain CLIP) gets RegionCLIP's zero one.
    student = import_regionclip(release_files["ckpt"], embeddings=release_files["emb_path"], names=names_path)
    assert torch.equal(student.background, state["roi_heads.box_predictor.cls_bg_score.weight"][0])
    assert not parts.background.any()
    vocab = student.clip.vocabulary
    assert len(vocab) == 80 and vocab.source == "coco_80_cls_emb.pth"
    assert torch.allclose(vocab.encode_text(["cat"]), F.normalize(release_files["emb"][names.index("cat")], dim=0)[None])
    assert student.config.background == "learned" and student.config.templates == "single"
    assert student.contents.student > 0 and student.contents.teacher > 0 and student.contents.offline_rpn > 0
    assert set(student.contents.box_predictor) == {"cls_score", "cls_bg_score", "bbox_pred"}


def test_region_embeddings_equal_an_independent_computation(release_files: dict, coco_names: tuple,
                                                            shared_data, tmp_path) -> None:
    from regionprompt.detect.regionclip.regions import RegionEncoder

    names_path, _ = coco_names
    image = photo(shared_data)
    boxes = torch.tensor([[17.5, 54.4, 318.8, 469.4], [347.5, 25.6, 640.0, 369.4], [0.0, 0.0, 640.0, 480.0]])
    parts = import_regionclip(release_files["ckpt"], embeddings=release_files["emb_path"], names=names_path,
                              input_size=224, use_rpn=False)
    regions = RegionEncoder(parts.clip, input_size=224)
    with torch.no_grad():
        ours = regions.embed(image, boxes)
        pixels = regions.pixels([image])
        scaled = boxes * torch.tensor([224 / 640, 224 / 480] * 2)
        expected = ref_region_embeddings(release_files["state"], "backbone.", pixels, scaled)
    assert ours.shape == (3, EMBED)
    assert torch.allclose(ours, expected, atol=2e-4), (ours - expected).abs().max()

    # One changed tensor deep in the region path (res5) changes the embeddings: the weights are really used.
    perturbed = dict(release_files["state"])
    perturbed["backbone.layer4.0.conv2.weight"] = perturbed["backbone.layer4.0.conv2.weight"] * 1.5
    path = tmp_path / "perturbed.pth"
    torch.save(perturbed, path)
    other = import_regionclip(path, embeddings=release_files["emb_path"], names=names_path, input_size=224,
                              use_rpn=False)
    with torch.no_grad():
        changed = RegionEncoder(other.clip, input_size=224).embed(image, boxes)
    assert (changed - ours).abs().max() > 1e-3


# ---- the detectron2 RPN ----------------------------------------------------------------------------


def test_rpn_release_matches_reference_and_proposes(release_files: dict, shared_data) -> None:
    rpn = read_rpn(release_files["rpn_path"], min_size_test=256, max_size_test=427)
    assert isinstance(rpn, Detectron2RPN)
    assert rpn.card.arch == "fpn" and rpn.card.blocks == (1, 1, 1, 1) and rpn.card.fpn_channels == FPN_CH
    raw = release_files["rpn_state"]
    model = rpn.state_dict()
    used = {k: v for k, v in raw.items() if not k.startswith("roi_heads.")}
    assert set(model) == set(used)
    for key, tensor in used.items():
        assert torch.equal(model[key], tensor), key

    image = torch.from_numpy(np.asarray(photo(shared_data), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x, (h, w) = rpn.preprocess(image)
    assert (h, w) == (256, 341) and x.shape[-2:] == (256, 352)  # shorter side 256, padded to /32
    # detectron2's input: BGR, 0..255, minus PIXEL_MEAN (std 1); zero padding on the right.
    resized = F.interpolate(image, size=(256, 341), mode="bilinear", align_corners=False, antialias=True)
    bgr = resized.flip(1) * 255 - torch.tensor([103.530, 116.280, 123.675]).view(1, 3, 1, 1)
    assert torch.allclose(x[..., :341], bgr, atol=1e-3) and not x[..., 341:].any()
    with torch.no_grad():
        logits, _ = rpn.head_outputs(x)
        expected = ref_rpn_logits(used, x)
    assert [t.shape[-2:] for t in logits] == [(64, 88), (32, 44), (16, 22), (8, 11), (4, 6)]
    for ours, ref in zip(logits, expected):
        # 0..255 inputs with std 1 give activations in the thousands: compare relative to their scale.
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), (ours - ref).abs().max()

    [found] = rpn.propose(image, max_proposals=50)
    assert 0 < len(found) <= 50
    b = found.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 640).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 480).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (found.objectness[:-1] >= found.objectness[1:]).all() and found.objectness.max() <= 1

    # A perturbed objectness bias changes the scores (the head's weights are the file's).
    changed = dict(used)
    changed["proposal_generator.rpn_head.objectness_logits.bias"] = changed[
        "proposal_generator.rpn_head.objectness_logits.bias"] - 2.0
    [other] = rpn_from_state(changed, "perturbed", min_size_test=256, max_size_test=427).propose(image, max_proposals=50)
    assert not torch.allclose(other.objectness[:5], found.objectness[:5])


def test_c4_rpn_and_detectron2_anchor_convention() -> None:
    # Base-RCNN-C4: 5 sizes x 3 ratios on res4, sizes outer; ratio = height / width, area = size**2.
    anchors = cell_anchors((32.0, 64.0, 128.0, 256.0, 512.0), (0.5, 1.0, 2.0))
    assert anchors.shape == (15, 4)
    w = math.sqrt(1024 / 0.5)
    assert torch.allclose(anchors[0], torch.tensor([-w / 2, -w * 0.25, w / 2, w * 0.25]))
    assert torch.allclose(anchors[4], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    state = detectron2_rpn("backbone.", "proposal_generator.", 7, arch="c4")
    rpn = rpn_from_state(state, "rpn_coco_48.pth", min_size_test=128, max_size_test=256)
    assert rpn.card.arch == "c4" and rpn.card.anchors_per_location == 15 and rpn.card.pre_nms_topk == 6000
    image = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(9))
    [found] = rpn.propose(image, max_proposals=20)
    assert 0 < len(found) <= 20 and (found.boxes[:, 2] <= 160).all() and (found.boxes[:, 3] <= 128).all()

    # With zero box deltas the best proposal is the anchor of the highest logit: this pins the order of
    # the head's channels (anchor a = size * 3 + ratio) and locations (row-major, stride 16, offset 0).
    state["proposal_generator.rpn_head.anchor_deltas.weight"] = torch.zeros_like(
        state["proposal_generator.rpn_head.anchor_deltas.weight"])
    state["proposal_generator.rpn_head.anchor_deltas.bias"] = torch.zeros(60)
    rpn = rpn_from_state(state, "rpn_coco_48.pth", min_size_test=128, max_size_test=256)
    [found] = rpn.propose(image, max_proposals=5)
    with torch.no_grad():
        [logits], _ = rpn.head_outputs(rpn.preprocess(image)[0])  # (1, 15, 8, 10): no resize, no padding
    a, y, x = np.unravel_index(int(logits[0].argmax()), tuple(logits.shape[1:]))
    size, ratio = (32.0, 64.0, 128.0, 256.0, 512.0)[a // 3], (0.5, 1.0, 2.0)[a % 3]
    bw = math.sqrt(size**2 / ratio)
    bh = ratio * bw
    cx, cy = 16.0 * x, 16.0 * y
    expected = torch.tensor([max(cx - bw / 2, 0), max(cy - bh / 2, 0), min(cx + bw / 2, 160), min(cy + bh / 2, 128)],
                            dtype=torch.float32)
    assert torch.allclose(found.boxes[0], expected, atol=1e-3), (found.boxes[0], expected)
    assert math.isclose(float(found.objectness[0]), float(torch.sigmoid(logits.max())), rel_tol=1e-5)


# ---- text sides ------------------------------------------------------------------------------------


def test_box_predictor_embeddings_and_lang_encoder(release_files: dict, tmp_path) -> None:
    # Without --embeddings, the finetuned detector's own class embeddings name its classes.
    names = tmp_path / "base48.txt"
    names.write_text("\n".join(f"class {i}" for i in range(48)) + "\n")
    parts = import_regionclip(release_files["ckpt"], names=names, use_rpn=False)
    rows = release_files["state"]["roi_heads.box_predictor.cls_score.weight"]
    assert torch.allclose(parts.clip.vocabulary.encode_text(["class 7"])[0], F.normalize(rows[7], dim=0))

    # A pretraining checkpoint with OpenAI's text tower under lang_encoder.*: an open-vocabulary CLIP.
    g = torch.Generator().manual_seed(8)
    text = {"lang_encoder.token_embedding.weight": 0.02 * torch.randn(49408, 64, generator=g),
            "lang_encoder.positional_embedding": 0.01 * torch.randn(77, 64, generator=g),
            "lang_encoder.ln_final.weight": torch.ones(64), "lang_encoder.ln_final.bias": torch.zeros(64),
            "lang_encoder.text_projection": torch.randn(64, EMBED, generator=g) / 8}
    blk = "lang_encoder.transformer.resblocks.0."
    for name, shape in (("attn.in_proj_weight", (192, 64)), ("attn.in_proj_bias", (192,)),
                        ("attn.out_proj.weight", (64, 64)), ("attn.out_proj.bias", (64,)), ("ln_1.weight", (64,)),
                        ("ln_1.bias", (64,)), ("mlp.c_fc.weight", (256, 64)), ("mlp.c_fc.bias", (256,)),
                        ("mlp.c_proj.weight", (64, 256)), ("mlp.c_proj.bias", (64,)), ("ln_2.weight", (64,)),
                        ("ln_2.bias", (64,))):
        text[blk + name] = 0.05 * torch.randn(*shape, generator=g)
    path = tmp_path / "regionclip_pretrained-cc_rn50.pth"
    torch.save({**clip_backbone("backbone.", 1), **text}, path)
    parts = import_regionclip(path, use_rpn=False)
    clip = parts.clip
    assert type(clip) is RegionPromptCLIP and clip.card.quick_gelu and clip.card.text.layers == 1
    assert parts.config.templates == "regionclip81"
    for key, tensor in text.items():
        assert torch.equal(clip.state_dict()[key[len("lang_encoder."):]], tensor), key
    assert clip.text_encoder().encode_text(["a photo of a unicorn."]).shape == (1, EMBED)


# ---- errors ----------------------------------------------------------------------------------------


def test_clear_errors(release_files: dict, coco_names: tuple, shared_data, tmp_path) -> None:
    names_path, _ = coco_names
    emb = release_files["emb_path"]
    jpeg = tmp_path / "photo.pth"
    photo(shared_data).save(jpeg, format="JPEG")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint, it is a JPEG image"):
        import_regionclip(jpeg, embeddings=emb, names=names_path)

    openai = tmp_path / "RN50_state.pt"
    torch.save({"visual.conv1.weight": torch.zeros(2, 3, 3, 3), "text_projection": torch.zeros(2, 2)}, openai)
    with pytest.raises(CheckpointError, match="OpenAI/open_clip CLIP state dict.*load_checkpoint"):
        import_regionclip(openai, embeddings=emb, names=names_path)
    with pytest.raises(CheckpointError, match="detectron2 ResNet RPN.*--rpn"):
        import_regionclip(release_files["rpn_path"], embeddings=emb, names=names_path)
    with pytest.raises(CheckpointError, match="single .* tensor"):
        import_regionclip(emb, embeddings=emb, names=names_path)

    few = tmp_path / "ten.txt"
    few.write_text("\n".join(f"n{i}" for i in range(10)))
    with pytest.raises(CheckpointError, match=r"80 embedding rows, but 10 names in .*ten\.txt"):
        import_regionclip(release_files["ckpt"], embeddings=emb, names=few)
    wide = tmp_path / "lvis_rn50x4.pth"
    torch.save(torch.randn(80, 640), wide)
    with pytest.raises(CheckpointError, match=r"dimension 640, but the image tower .* embeds regions in 32"):
        import_regionclip(release_files["ckpt"], embeddings=wide, names=names_path)

    student_only = tmp_path / "finetuned.pth"
    torch.save({**clip_backbone("backbone.", 1), **box_predictor(48, 4)}, student_only)
    with pytest.raises(CheckpointError, match="no teacher copy"):
        import_regionclip(student_only, embeddings=emb, names=names_path, teacher=True)
    with pytest.raises(CheckpointError, match="no offline RPN.*--rpn"):
        import_regionclip(student_only, embeddings=emb, names=names_path)
    with pytest.raises(RegionPromptError, match="--embeddings needs --names"):
        import_regionclip(student_only, embeddings=emb)

    # A checkpoint that needs arbitrary Python objects is refused, naming them.
    pickled = tmp_path / "with_config.pth"
    torch.save({"model": clip_backbone("backbone.", 1), "cfg": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace.*refusing to unpickle"):
        import_regionclip(pickled, embeddings=emb, names=names_path)


# ---- the command line, end to end on a real photo -------------------------------------------------


def test_cli_import_then_detect_on_a_coco_photo(release_files: dict, coco_names: tuple, shared_data, tmp_path,
                                                capsys) -> None:
    names_path, _ = coco_names
    out = tmp_path / "regionclip_detector"
    code = main(["import-regionclip", str(release_files["ckpt"]), "--embeddings", str(release_files["emb_path"]),
                 "--names", str(names_path), "--rpn", str(release_files["rpn_path"]), "--input-size", "256",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "80 names" in printed and "R50-FPN" in printed and "learned" in printed
    header = json.loads((out / "detector.json").read_text())
    assert header["kind"] == "regionclip-zeroshot" and header["background"] == "background.safetensors"

    image = shared_data / "hf_two_cats" / "000000039769.png"
    det_out = tmp_path / "det"
    code = main(["detect", str(image), "--model", str(out), "--text", "cat, remote", "--box", "17,54,318,469",
                 "--threshold", "0", "--cache", "none", "--out", str(det_out)])
    assert code == 0
    result = json.loads((det_out / "000000039769.json").read_text())
    assert result["width"] == 640 and result["height"] == 480
    assert result["names"] == ["cat", "remote", "object"]
    assert result["detections"]
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 480
        assert 0 <= det["score"] <= 1 and det["name"] in result["names"]
    assert (det_out / "000000039769.png").is_file()

    # The folder reloads as the same models; a name outside the vocabulary says where the vocabulary is from.
    detector = Detector.load(out, cache=None)
    assert isinstance(detector.engine.model, VocabularyCLIP)
    assert isinstance(detector.engine.proposal_source, Detectron2RPN)
    assert detector.engine.proposal_source.input_size == 256
    with pytest.raises(PromptError, match=r"'unicorn' is not in the fixed vocabulary.*coco_80_cls_emb\.pth"):
        detector.predict(str(image), text="unicorn")
    code = main(["detect", str(image), "--model", str(out), "--text", "unicorn", "--cache", "none",
                 "--out", str(det_out)])
    assert code == 2 and "coco_80_cls_emb.pth" in capsys.readouterr().err
