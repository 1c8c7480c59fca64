"""The Detector API: a real detector folder (tiny random models) on rendered EmojiWorld scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_fixtures import build_detector_folder, render_scenes

import regionprompt
from regionprompt.api import DETECTOR_FILE, Detector, build_prompts
from regionprompt.concept import PromptConcept
from regionprompt.concepts.library import ConceptLibrary
from regionprompt.errors import CheckpointError, ImageLoadError, PromptError, RegionPromptError
from regionprompt.prompts import BoxPrompt, TextPrompt
from regionprompt.results import Detections


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)  # the machine's two cores are shared; one thread avoids oversubscription
    return build_detector_folder(tmp_path_factory.mktemp("detector"))


@pytest.fixture(scope="module")
def detector(folder, tmp_path_factory):
    return Detector.load(folder, cache=tmp_path_factory.mktemp("cache") / "embeddings.sqlite",
                         concept_library=ConceptLibrary(tmp_path_factory.mktemp("lib") / "concepts.sqlite"))


@pytest.fixture(scope="module")
def scenes():
    return render_scenes(3)


def box_of(scene, i=0):
    return tuple(float(v) for v in scene.boxes_xyxy()[i])


def test_folder_layout_and_hash(folder, detector):
    header = json.loads((folder / DETECTOR_FILE).read_text())
    assert header["kind"] == "regionclip-zeroshot" and header["clip"] == "clip" and header["rpn"] == "rpn"
    assert header["config"]["max_proposals"] == 30
    for part in ("clip", "rpn"):
        assert (folder / part / "model.safetensors").is_file() and (folder / part / "card.json").is_file()
    card = json.loads((folder / "clip" / "card.json").read_text())
    assert detector.model_hash == card["weights_hash"] and len(detector.model_hash) == 64
    assert regionprompt.Detector is Detector


def test_any_image_input_and_batches(detector, scenes, tmp_path):
    scene = scenes[0]
    path = tmp_path / "scene.png"
    scene.image.save(path)
    sources = [str(path), path.read_bytes(), scene.image, np.asarray(scene.image), torch.from_numpy(np.asarray(scene.image).copy())]
    results = detector.predict(sources, text="dog, red apple", threshold=0.0)
    assert len(results) == len(sources)
    for dets in results:
        assert isinstance(dets, Detections) and dets.names == ("dog", "red apple") and dets.image_wh == (128, 128)
        # The fifth image runs in a batch of one (batch_size 4): kernels for another batch size may round
        # differently in the last digit on some CPUs.
        assert torch.allclose(dets.scores, results[0].scores) and torch.allclose(dets.boxes, results[0].boxes, atol=1e-3)
        assert ((dets.boxes >= -1e-3) & (dets.boxes <= 128 + 1e-3)).all() and len(dets) <= 100
        assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
    [single] = detector.predict(scene.image, text=["dog"], threshold=0.0)
    assert single.names == ("dog",)
    batch = detector.predict(np.stack([np.asarray(s.image) for s in scenes]), text="dog", threshold=0.0)
    assert len(batch) == 3
    assert json.loads(results[0].to_json())["names"] == ["dog", "red apple"]
    assert all(r["category_id"] in (1, 2) for r in results[0].to_coco(image_id=7))


def test_visual_mixed_and_given_box_workflows(detector, scenes):
    a, b = scenes[0], scenes[1]
    # Interactive: a box drawn on the searched image.
    [here] = detector.predict(a.image, boxes=[box_of(a)], threshold=0.0)
    assert here.names == ("object",) and here.prompts[0].kind == "visual"
    # Generic: boxes and a point drawn on another image, several exemplars -> one category.
    x1, y1, x2, y2 = box_of(a, 1)
    [there] = detector.predict(b.image, boxes=[box_of(a)], points=[((x1 + x2) / 2, (y1 + y2) / 2)],
                               prompt_images=a.image, visual_label="thing", threshold=0.0)
    assert there.names == ("thing",) and len(there.prompts[0].visuals) == 2
    # Mixed: a labelled box joins the text category of that name.
    [mixed] = detector.predict(b.image, text="apple", boxes=[{"box": box_of(a), "label": "apple"}],
                               prompt_images=a.image, threshold=0.0)
    assert mixed.names == ("apple",) and mixed.prompts[0].kind == "mixed"
    # Given boxes (ground truth) instead of proposals: only those boxes come back.
    truth = torch.from_numpy(b.boxes_xyxy())
    [given] = detector.predict(b.image, text="dog, cat", proposals=[truth], threshold=0.0)
    assert {tuple(x) for x in given.boxes.tolist()} <= {tuple(x) for x in truth.tolist()}


def test_negatives_and_threshold(detector, scenes):
    a = scenes[0]
    truth = torch.from_numpy(a.boxes_xyxy())
    [plain] = detector.predict(a.image, boxes=[box_of(a, 0)], proposals=[truth], threshold=0.0)
    [without] = detector.predict(a.image, boxes=[box_of(a, 0)], negatives=[box_of(a, 1)], proposals=[truth], threshold=0.0)
    # The negative's own region is closer to the negative (cosine 1) than to the exemplar.
    assert box_of(a, 1) in {tuple(x) for x in plain.boxes.tolist()}
    assert box_of(a, 1) not in {tuple(x) for x in without.boxes.tolist()}
    [high] = detector.predict(a.image, text="dog", threshold=0.9)
    assert (high.scores >= 0.9).all()


def test_concepts_by_object_and_name(detector, scenes):
    a, b = scenes[0], scenes[1]
    concept = detector.make_concept("my thing", text="dog", boxes=[box_of(a)], prompt_images=a.image,
                                    negatives=["cat"])
    assert concept.model_hash == detector.model_hash and concept.negatives.shape == (1, 256)
    assert {s["kind"] for s in concept.sources} == {"text", "box"}
    detector._concept_library.add(concept, replace=True)
    [by_object] = detector.predict(b.image, concepts=[concept], threshold=0.0)
    [by_name] = detector.predict(b.image, concepts=["my thing"], threshold=0.0)
    [by_prompt] = detector.predict(b.image, text=[TextPrompt("dog", label="my thing")],
                                   boxes=[BoxPrompt(box_of(a), image=a.image, label="my thing")],
                                   negatives=[TextPrompt("cat", label="my thing")], threshold=0.0)
    assert by_object.names == by_name.names == by_prompt.names == ("my thing",)
    assert torch.allclose(by_object.scores, by_name.scores)
    assert torch.allclose(by_object.scores, by_prompt.scores, atol=1e-5)
    with pytest.raises(PromptError, match="unknown concept 'nope'"):
        detector.predict(b.image, concepts=["nope"])
    other = PromptConcept("alien", concept.embedding, model_hash="f" * 64)
    with pytest.raises(PromptError, match="made by model"):
        detector.predict(b.image, concepts=[other])


def test_prompt_validation_messages(detector, scenes):
    a = scenes[0]
    cases = [
        ({"text": ""}, "holds no phrase"),
        ({"text": []}, "prompt list is empty"),
        ({}, "prompt list is empty"),
        ({"text": [" "]}, "empty"),
        ({"boxes": [(100, 100, 300, 300)]}, "outside the 128x128 image"),
        ({"boxes": [(10, 10, 20)]}, "expected 4 numbers"),
        ({"boxes": [(0, 0, 500, 500)], "prompt_images": a.image}, "outside"),
        ({"boxes": [(0, 0, 5, 5), (1, 1, 6, 6)], "prompt_images": [a.image]}, "one per prompt"),
        ({"negatives": ["cat"]}, "negative prompts need a text, box or point category"),
        ({"text": "dog", "threshold": 1.5}, "threshold"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PromptError, match=message):
            detector.predict(a.image, **kwargs)


def test_build_prompts_forms():
    prompts = build_prompts("dog, red apple", boxes=(1, 2, 3, 4), points=[[5, 6]], negatives=["cat", (0, 0, 2, 2)])
    kinds = [(type(p).__name__, p.negative) for p in prompts]
    assert kinds == [("TextPrompt", False), ("TextPrompt", False), ("BoxPrompt", False), ("PointPrompt", False),
                     ("TextPrompt", True), ("BoxPrompt", True)]
    assert prompts[2].label == "object" and prompts[5].label is None
    # The server's JSON form of a text negative works from Python too.
    [negative] = [p for p in build_prompts("dog", negatives=[{"text": "dog face"}]) if p.negative]
    assert isinstance(negative, TextPrompt) and negative.text == "dog face"


def test_default_model_ships_with_the_package():
    detector = Detector.load("default", cache=None)
    assert len(detector.model_hash) == 64


def test_load_errors(folder, tmp_path, monkeypatch):
    import regionprompt.api

    monkeypatch.setattr(regionprompt.api, "default_model_dir", lambda: tmp_path / "not-installed")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        Detector.load("default")
    with pytest.raises(CheckpointError, match="no such detector folder"):
        Detector.load(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DETECTOR_FILE).write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(CheckpointError, match="not supported"):
        Detector.load(bad)
    (bad / DETECTOR_FILE).write_text(json.dumps({"kind": "regionclip-zeroshot", "format_version": 1, "clip": "../x",
                                                "rpn": None}))
    with pytest.raises(CheckpointError, match="sub-folder"):
        Detector.load(bad)


def test_detector_without_rpn_classifies_given_boxes(tmp_path, scenes):
    folder = build_detector_folder(tmp_path / "det", rpn=False)
    detector = Detector.load(folder, cache=None)
    a = scenes[0]
    with pytest.raises(RegionPromptError, match="no proposal network"):
        detector.predict(a.image, text="dog")
    [dets] = detector.predict(a.image, text="dog, cat", proposals=[a.boxes_xyxy()], threshold=0.0)
    assert len(dets) >= 1


def test_to_supervision(detector, scenes):
    sv = pytest.importorskip("supervision")
    [dets] = detector.predict(scenes[0].image, text="dog, cat", threshold=0.0)
    converted = dets.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == len(dets)
    assert np.allclose(converted.xyxy, dets.boxes.numpy()) and np.allclose(converted.confidence, dets.scores.numpy())
    assert converted.class_id.tolist() == dets.labels.tolist()
    assert converted.data["class_name"].tolist() == dets.label_names


def test_boxes_stay_inside_the_image_and_one_label_per_box(scenes):
    """The shipped model on EmojiWorld scenes with many look-alike names: every box lies inside its image,
    and ``one_label_per_box`` leaves no two boxes overlapping above the NMS IoU (one label per object)."""
    from torchvision.ops import box_iou

    from regionprompt.world.concepts import load_concepts

    detector = Detector.load("default", cache=None)
    concepts = load_concepts()
    names = sorted({concepts.by_id(int(c)).name for s in scenes for c in s.labels()})
    many = detector.predict([s.image for s in scenes], text=names, threshold=0.05)
    one = detector.predict([s.image for s in scenes], text=names, threshold=0.05, one_label_per_box=True)
    assert sum(len(d) for d in many) > sum(len(d) for d in one) > 0
    for dets, scene in zip(many + one, list(scenes) * 2):
        width, height = scene.image.size
        assert float(dets.boxes[:, 0::2].min()) >= 0 and float(dets.boxes[:, 0::2].max()) <= width
        assert float(dets.boxes[:, 1::2].min()) >= 0 and float(dets.boxes[:, 1::2].max()) <= height
    for dets in one:
        iou = box_iou(dets.boxes, dets.boxes).fill_diagonal_(0)
        assert float(iou.max()) <= detector.config.nms_iou
    with pytest.raises(PromptError, match="one_label_per_box"):
        detector.predict(scenes[0].image, text="dog", one_label_per_box="yes")


def test_detections_clip_boxes_to_the_image():
    dets = Detections(torch.tensor([[-19.7, 92.8, 231.7, 264.8]]), torch.tensor([0.9]), torch.tensor([0]), ("cat",),
                      (200, 250))
    assert dets.boxes.tolist() == [[0.0, pytest.approx(92.8), 200.0, 250.0]]


def test_default_model_dir_follows_the_environment(monkeypatch, tmp_path):
    from regionprompt.api import DEFAULT_MODEL_ENV, default_model_dir

    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    assert default_model_dir().parts[-2:] == ("models", "default")
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path))
    assert default_model_dir() == tmp_path


def test_sources_folder_glob_and_list_and_the_field_names_of_other_libraries(detector, scenes, tmp_path):
    for i, scene in enumerate(scenes):
        scene.image.save(tmp_path / f"s{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    by_folder = detector.predict(tmp_path, text="dog", threshold=0.0)
    by_glob = detector.predict(str(tmp_path / "s*.png"), text="dog", threshold=0.0)
    by_list = detector.predict([tmp_path / "s0.png", str(tmp_path / "s[12].png")], text="dog", threshold=0.0)
    for results in (by_folder, by_glob, by_list):
        assert [Path(d.image_name).name for d in results] == ["s0.png", "s1.png", "s2.png"]
    with pytest.raises(ImageLoadError, match="no image files match"):
        detector.predict(str(tmp_path / "*.jpg"), text="dog")
    [plain] = detector.predict(tmp_path / "s0.png", text="dog, cat", threshold=0.1)
    [aliased] = detector.predict(tmp_path / "s0.png", candidate_labels=["dog", "cat"], conf=0.1)
    assert torch.equal(plain.boxes, aliased.boxes) and plain.names == aliased.names
    [capped] = detector.predict(tmp_path / "s0.png", text="dog, cat", conf=0.0, max_det=2, iou=0.3)
    assert len(capped) <= 2
    with pytest.raises(PromptError, match="threshold= or its alias conf="):
        detector.predict(tmp_path / "s0.png", text="dog", threshold=0.1, conf=0.2)


def test_detections_read_like_other_libraries(detector, scenes, tmp_path):
    scenes[0].image.save(tmp_path / "s0.png")
    [dets] = detector.predict(tmp_path / "s0.png", text="dog, cat", threshold=0.0)
    assert len(dets) > 3
    assert dets.xyxy is dets.boxes and dets.conf is dets.scores and dets.cls is dets.labels
    assert torch.allclose(dets.xyxyn * 128, dets.boxes) and float(dets.xyxyn.max()) <= 1
    text = repr(dets)
    assert len(text) < 200 and text.startswith(f"Detections({len(dets)} boxes on ") and "names: dog, cat" in text
    hf = dets.to_hf()
    assert set(hf[0]) == {"score", "label", "box"} and set(hf[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    assert hf[0]["score"] == pytest.approx(float(dets.scores.max()), abs=1e-5) and hf[0]["label"] in ("dog", "cat")
    assert dets.plot().size == (128, 128)  # the image is read again from image_name
    with pytest.raises(RegionPromptError, match="plot\\(\\) needs the image"):
        detector.predict(scenes[0].image, text="dog")[0].plot()
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(RegionPromptError, match="needs pandas"):
            dets.to_pandas()
    else:
        frame = dets.to_pandas()
        assert list(frame.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"] and len(frame) == len(dets)


def test_concept_short_repr_save_and_load(detector, scenes, tmp_path):
    concept = detector.make_concept("dog", text="dog", negatives=["cat"])
    text = repr(concept)
    assert text == f"PromptConcept(name='dog', dim={concept.dim}, negatives=1, model_hash='{concept.model_hash[:12]}', sources: text, text)"
    path = concept.save(tmp_path / "dog.safetensors")
    back = PromptConcept.load(path)
    assert back.name == "dog" and torch.equal(back.embedding, concept.embedding) and back.model_hash == concept.model_hash


def test_device_argument_moves_models_or_says_why_not(detector, folder, scenes):
    [plain] = detector.predict(scenes[0].image, text="dog, cat", threshold=0.0)
    [on_cpu] = detector.predict(scenes[0].image, text="dog, cat", threshold=0.0, device="cpu")
    assert detector.device == torch.device("cpu") and detector.to("cpu") is detector
    assert torch.equal(plain.boxes, on_cpu.boxes) and torch.equal(plain.scores, on_cpu.scores)
    with pytest.raises(RegionPromptError, match="unknown device 'gpu0'"):
        detector.predict(scenes[0].image, text="dog", device="gpu0")
    with pytest.raises(RegionPromptError, match="unsupported device 'mps'"):
        Detector.load(folder, device="mps", cache=None)
    if not torch.cuda.is_available():
        with pytest.raises(RegionPromptError, match="torch sees no CUDA GPU"):
            detector.predict(scenes[0].image, text="dog", device="cuda")
        with pytest.raises(RegionPromptError, match="torch sees no CUDA GPU"):
            Detector.load(folder, device="cuda:0", cache=None)
    assert detector.device == torch.device("cpu")  # a refused device leaves the models where they were
