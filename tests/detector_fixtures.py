"""Helpers shared by the detector API and CLI tests: a real detector folder with tiny random models,
and rendered EmojiWorld scenes."""

from __future__ import annotations

from pathlib import Path

import torch

from regionprompt.api import Detector
from regionprompt.detect.regionclip import ZeroShotConfig
from regionprompt.detect.rpn import ProposalNetwork, RpnCard
from regionprompt.vl.clip_model import build_clip
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig

TINY_RPN = RpnCard(image_size=64, widths=(8, 8, 16, 16), fpn_channels=16,
                   anchor_sizes=((8.0,), (16.0,), (32.0,), (64.0,)), aspect_ratios=(1.0,))


def build_detector_folder(directory: Path, *, rpn: bool = True, seed: int = 0) -> Path:
    """Save a detector (RN-tiny CLIP + tiny RPN, random weights) to ``directory``."""
    torch.manual_seed(seed)
    clip = build_clip("RN-tiny")
    network = ProposalNetwork(TINY_RPN) if rpn else None
    config = ZeroShotConfig(max_proposals=30)
    return Detector.from_models(clip, network, config).save(directory)


def render_scenes(count: int, *, size: int = 128, seed: int = 3) -> list:
    renderer = SceneRenderer.default(SceneConfig(size=size, min_objects=2, max_objects=5))
    return [renderer.render("test", index, seed) for index in range(count)]
