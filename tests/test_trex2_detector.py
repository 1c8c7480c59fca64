"""T-Rex2 behind the Detector API: every prompt workflow, negatives, concepts, folders (tiny random model)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regionprompt.api import Detector
from regionprompt.detect.trex2_engine import TRex2DetectConfig
from regionprompt.errors import CheckpointError, PromptError
from regionprompt.trex2 import TRex2Card, build_trex2
from regionprompt.vl.cards import load_card
from regionprompt.vl.compact import keep_learnt_tokens
from regionprompt.vl.templates import EMOJI_TEMPLATES

TINY = {"image_size": 64, "dim": 32, "heads": 2, "points": 2, "encoder_layers": 1, "decoder_layers": 2,
        "prompt_layers": 2, "ffn_dim": 64, "num_queries": 12}


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(1)
    model = build_trex2(TRex2Card(clip=load_card("RN-tiny"), **TINY), seed=0)
    return Detector.from_trex2(model, TRex2DetectConfig(max_detections=50))


@pytest.fixture(scope="module")
def scene():
    return (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)


def test_text_prompts_give_boxes_inside_the_image(detector, scene):
    [dets] = detector.predict(scene, text="dog, red apple", threshold=0.0)
    assert dets.names == ("dog", "red apple")
    assert len(dets) == 2 * TINY["num_queries"]  # every query, each category (NMS at 0.7 keeps distinct boxes)
    assert (dets.boxes[:, 0] >= -1e-4).all() and (dets.boxes[:, 2] <= 120 + 1e-4).all()
    assert (dets.boxes[:, 3] <= 90 + 1e-4).all()
    assert (dets.scores[:-1] >= dets.scores[1:]).all()
    [high] = detector.predict(scene, text="dog, red apple", threshold=float(dets.scores[3]))
    assert len(high) == 4


def test_interactive_equals_generic_on_the_same_image(detector, scene):
    box = [10.0, 20.0, 60.0, 70.0]
    [interactive] = detector.predict(scene, boxes=[box], threshold=0.0)
    [generic] = detector.predict(scene, boxes=[box], prompt_images=scene.copy(), threshold=0.0)
    assert torch.allclose(interactive.scores, generic.scores, atol=1e-5)
    assert torch.allclose(interactive.boxes, generic.boxes, atol=1e-3)
    [points] = detector.predict(scene, points=[[30.0, 40.0], [50, 50]], threshold=0.0)
    assert points.names == ("object",) and len(points)


def test_mixed_concept_averages_text_and_visual(detector, scene):
    box = [10.0, 20.0, 60.0, 70.0]
    text = detector.make_concept("cat", text="cat")
    visual = detector.make_concept("cat", boxes=[box], prompt_images=scene)
    mixed = detector.make_concept("cat", text="cat", boxes=[box], prompt_images=scene)
    assert torch.allclose(mixed.embedding, F.normalize(text.embedding + visual.embedding, dim=0), atol=1e-5)
    assert [s["kind"] for s in mixed.sources] == ["text", "box"]
    # Two images of one category: the mean of the two per-image embeddings (generic workflow).
    other = scene[::-1].copy()
    both = detector.make_concept("cat", boxes=[box, box], prompt_images=[scene, other])
    alone = detector.make_concept("cat", boxes=[box], prompt_images=other)
    assert torch.allclose(both.embedding, F.normalize(visual.embedding + alone.embedding, dim=0), atol=1e-5)
    with pytest.raises(PromptError, match="need the image"):
        detector.make_concept("cat", boxes=[box])


def test_negatives_drop_queries_closer_to_the_negative(detector, scene):
    engine = detector.engine
    dog, cat = engine.texts(["dog", "cat"]).values()
    pixels = engine.model.preprocess(torch.from_numpy(scene).permute(2, 0, 1).float()[None] / 255)
    with torch.no_grad():
        scores = engine.model(engine.model.encode_images(pixels), torch.stack([dog, cat]), select_with=1).logits[0].sigmoid()
    threshold = float(scores[:, 0].median())
    expected = int(((scores[:, 0] >= threshold) & (scores[:, 1] <= scores[:, 0])).sum())
    [plain] = detector.predict(scene, text="dog", threshold=threshold)
    [filtered] = detector.predict(scene, text="dog", negatives=["cat"], threshold=threshold)
    assert len(plain) == int((scores[:, 0] >= threshold).sum())
    assert len(filtered) == expected < len(plain)
    # The concept keeps the negative and filters the same way.
    concept = detector.make_concept("dog", text="dog", negatives=["cat"])
    [again] = detector.predict(scene, concepts=[concept], threshold=threshold)
    assert torch.allclose(again.scores, filtered.scores)


def test_errors(detector, scene):
    with pytest.raises(PromptError, match="own boxes"):
        detector.predict(scene, text="dog", proposals=[[[0, 0, 5, 5]]])
    with pytest.raises(PromptError, match="outside"):
        detector.predict(scene, boxes=[[0, 0, 500, 50]])
    other = Detector.from_trex2(build_trex2(TRex2Card(clip=load_card("RN-tiny"), **TINY), seed=1))
    with pytest.raises(PromptError, match="made by model"):
        detector.predict(scene, concepts=[other.make_concept("dog", text="dog")])


def test_folder_roundtrip_full_and_compact(detector, scene, tmp_path):
    [before] = detector.predict(scene, text="dog", threshold=0.0)
    concept = detector.make_concept("dog", text="dog")
    detector.save(tmp_path / "full")
    loaded = Detector.load(tmp_path / "full", cache=None)
    assert loaded.kind == "trex2" and loaded.model_hash == detector.model_hash
    [after] = loaded.predict(scene, concepts=[concept], threshold=0.0)
    assert torch.allclose(before.scores, after.scores, atol=1e-5)
    bare = Detector.load(tmp_path / "full" / "trex2", cache=None)  # a training run's model folder
    assert bare.kind == "trex2" and bare.model_hash == detector.model_hash

    # The shipped form: token rows of words never trained zeroed, float16, row-sparse.
    model = copy.deepcopy(detector.engine.model)
    keep_learnt_tokens(model.clip, [t.format("dog") for t in EMOJI_TEMPLATES])
    trimmed = Detector.from_trex2(model, detector.config)
    [reference] = trimmed.predict(scene, text="dog", threshold=0.0)
    trimmed.save(tmp_path / "small", compact=True)
    small = Detector.load(tmp_path / "small", cache=None)
    assert small.model_hash != detector.model_hash
    size = sum(p.stat().st_size for p in (tmp_path / "small").rglob("*.safetensors"))
    full = sum(p.stat().st_size for p in (tmp_path / "full").rglob("*.safetensors"))
    assert size < full / 4
    [half] = small.predict(scene, text="dog", threshold=0.0)
    assert abs(float(half.scores[0]) - float(reference.scores[0])) < 2e-2
    (tmp_path / "small" / "detector.json").write_text('{"kind": "trex2", "format_version": 1, "model": "../x"}')
    with pytest.raises(CheckpointError, match="sub-folder"):
        Detector.load(tmp_path / "small", cache=None)


def test_default_threshold_comes_from_the_model(detector, scene):
    assert detector.default_threshold == TRex2DetectConfig().score_threshold == 0.2
    [implicit] = detector.predict(scene, text="dog")
    [explicit] = detector.predict(scene, text="dog", threshold=0.2)
    assert torch.equal(implicit.scores, explicit.scores) and (implicit.scores >= 0.2).all()
    strict = detector.reconfigure(score_threshold=0.9)
    assert strict.default_threshold == 0.9 and len(strict.predict(scene, text="dog")[0]) <= len(implicit)
    with pytest.raises(ValueError, match="score_threshold"):
        TRex2DetectConfig(score_threshold=1.5)
