"""A real ``regionprompt.api.Detector`` folder with tiny random weights, for wiring tests (server, CLI, UI).

Random weights make its detections meaningless, but every code path is the real one: folder
format, loading, proposals, region and text embeddings, concepts and the model hash.
"""

from __future__ import annotations

from pathlib import Path

import torch

from regionprompt.api import Detector
from regionprompt.detect.regionclip.zeroshot import ZeroShotConfig
from regionprompt.detect.rpn import ProposalNetwork, RpnCard
from regionprompt.vl.clip_model import build_clip


def build_tiny_detector(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random detector (RN-tiny CLIP, a narrow RPN, 16 proposals per image) to ``folder``."""
    torch.manual_seed(seed)
    clip = build_clip("RN-tiny")
    rpn = ProposalNetwork(RpnCard(image_size=128, widths=(8, 8, 8, 8), fpn_channels=8,
                                  anchor_sizes=((16.0,), (32.0,), (64.0,), (128.0,))))
    # Few proposals: region pooling dominates the tiny model's time.
    config = ZeroShotConfig(max_proposals=16, max_detections=10)
    Detector.from_models(clip, rpn, config, cache=None).save(folder)
    return folder


def build_tiny_trex2_detector(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random T-Rex2 detector (RN-tiny backbone, 64 px input, 12 queries, 10 detections) to ``folder``."""
    from regionprompt.detect.trex2_engine import TRex2DetectConfig
    from regionprompt.trex2 import TRex2Card, build_trex2
    from regionprompt.vl.cards import load_card

    card = TRex2Card(clip=load_card("RN-tiny"), image_size=64, dim=32, heads=2, points=2, encoder_layers=1,
                     decoder_layers=2, prompt_layers=2, ffn_dim=64, num_queries=12)
    Detector.from_trex2(build_trex2(card, seed=seed), TRex2DetectConfig(max_detections=10)).save(folder)
    return folder
