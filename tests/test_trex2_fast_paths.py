"""The inference speed-ups keep the shipped EmojiWorld model's detections: the one-call deformable attention
against the per-level sampling it replaced, and the bfloat16 autocast option against float32."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from detector_fixtures import render_scenes
from regionprompt.api import Detector
from regionprompt.images import to_tensor
from regionprompt.trex2 import deform_attn
from regionprompt.world.concepts import load_concepts


def per_level_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """The previous implementation: one ``grid_sample`` per level on that level's own map, then a stack."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, h, w)
        g = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    return (stacked * weights).sum(-1).view(batch, heads * head_dim, queries).transpose(1, 2)


@pytest.fixture(scope="module")
def shipped():
    return Detector.load("default", cache=None)


@pytest.fixture(scope="module")
def images():
    return [scene.image for scene in render_scenes(6, size=256)]


NAMES = ["dog", "cat", "red apple", "car", "star", "tree"]


def _predict(detector, images):
    return detector.predict(images, text=NAMES, threshold=0.1)


def test_one_call_sampling_gives_the_shipped_models_detections(shipped, images, monkeypatch):
    new = _predict(shipped, images)
    monkeypatch.setattr(deform_attn, "ms_deform_attn", per_level_ms_deform_attn)
    old = _predict(shipped, images)
    assert sum(len(d) for d in new) > 0
    for a, b in zip(new, old):
        assert a.labels.tolist() == b.labels.tolist()
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-2, rtol=0)


def test_one_call_sampling_matches_per_level_sampling_at_real_size_in_float32():
    torch.manual_seed(0)
    shapes = ((100, 100), (50, 50), (25, 25))
    value = torch.randn(1, sum(h * w for h, w in shapes), 8, 32)
    locations = torch.rand(1, 500, 8, 3, 4, 2) * 1.2 - 0.1
    weights = torch.rand(1, 500, 8, 3, 4).flatten(-2).softmax(-1).view(1, 500, 8, 3, 4)
    torch.testing.assert_close(deform_attn.ms_deform_attn(value, shapes, locations, weights),
                               per_level_ms_deform_attn(value, shapes, locations, weights), atol=1e-4, rtol=0)


def test_bfloat16_autocast_keeps_the_shipped_models_scores_and_boxes(shipped, images):
    """Accuracy check of the bfloat16 option on the shipped T-Rex2: each prompt's best query score per image
    moves by 0.005 on average (at most 0.08), and where float32 finds the prompt (best score >= 0.15) the
    best query's box is the same (IoU >= 0.9)."""
    model = shipped.engine.model
    pixels = torch.stack([to_tensor(image) for image in images])
    prompts = model.embed_texts([concept.name for concept in load_concepts()][:40])
    exact = model.detect(pixels, prompts)
    fast = model.detect(pixels, prompts, bfloat16=True)
    assert fast.scores.dtype == torch.float32
    best_exact, at_exact = exact.scores.max(1)  # (B, K)
    best_fast, at_fast = fast.scores.max(1)
    diff = (best_exact - best_fast).abs()
    assert float(diff.mean()) <= 0.005 and float(diff.max()) <= 0.08
    found = best_exact >= 0.15
    assert found.any()
    for i in range(len(images)):
        boxes_exact = exact.boxes[i][at_exact[i][found[i]]]
        boxes_fast = fast.boxes[i][at_fast[i][found[i]]]
        if len(boxes_exact):
            assert float(box_iou(boxes_exact, boxes_fast).diag().min()) >= 0.9


def test_bfloat16_detector_option_finds_the_same_objects(shipped, images):
    exact = _predict(shipped, images)
    fast = _predict(shipped.reconfigure(precision="bfloat16"), images)
    assert shipped.reconfigure(precision="bfloat16").config.precision == "bfloat16"
    # The most confident detection of each image survives; boxes of ~20 px objects move by about a pixel.
    for a, b in zip(exact, fast):
        assert a.labels[0] == b.labels[0] and float(box_iou(a.boxes[:1], b.boxes[:1])) >= 0.75
        assert abs(float(a.scores[0] - b.scores[0])) <= 0.05


def test_precision_is_validated(shipped):
    with pytest.raises(ValueError, match="precision"):
        shipped.reconfigure(precision="float16")
