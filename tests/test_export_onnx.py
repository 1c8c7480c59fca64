"""ONNX export (`regionprompt export`, regionprompt.export) and running exports with onnxruntime.

A tiny T-Rex2 detector with a region namer (random weights, built here) is exported once per module;
onnxruntime and torch must then agree on EmojiWorld scenes for every prompt kind. The shipped default
model's export (slow) proves that prompts made after the export are found.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from detector_fixtures import render_scenes  # noqa: E402

from regionprompt.api import Detector  # noqa: E402
from regionprompt.cli import main  # noqa: E402
from regionprompt.detect.regionclip.zeroshot import ZeroShotConfig  # noqa: E402
from regionprompt.detect.trex2_engine import TRex2DetectConfig  # noqa: E402
from regionprompt.errors import CheckpointError, RegionPromptError  # noqa: E402
from regionprompt.export import export_detector, read_export  # noqa: E402
from regionprompt.trex2 import TRex2Card, build_trex2  # noqa: E402
from regionprompt.vl.cards import load_card  # noqa: E402
from regionprompt.vl.clip_model import build_clip  # noqa: E402
from regionprompt.world.render import SceneRenderer  # noqa: E402
from regionprompt.world.scene import SceneConfig  # noqa: E402

TOLERANCE = 1e-3  # the bound on |score(onnxruntime) - score(torch)|


def _tiny_trex2_with_namer(folder: Path) -> Path:
    torch.manual_seed(0)
    card = TRex2Card(clip=load_card("RN-tiny"), image_size=64, dim=32, heads=2, points=2, encoder_layers=1,
                     decoder_layers=2, prompt_layers=2, ffn_dim=64, num_queries=12)
    model = build_trex2(card, seed=0)
    # Random weights give near-equal scores; a larger classifier scale spreads them so a wrong box or
    # label in the export would change the detections instead of hiding among ties.
    with torch.no_grad():
        model.decoder.classifier.log_scale.fill_(4.0)
    namer = build_clip("RN-tiny")
    Detector.from_trex2(model, TRex2DetectConfig(max_detections=10), namer=namer,
                        namer_config=ZeroShotConfig(input_size=64, max_proposals=8)).save(folder)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny detector and its export, made once by the command line (an export takes about a minute)."""
    root = tmp_path_factory.mktemp("export")
    source = _tiny_trex2_with_namer(root / "tiny")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(source), "--format", "onnx", "--out", str(root / "tiny-onnx"), "--check-scenes", "2"])
    assert code == 0
    return source, root / "tiny-onnx", printed.getvalue()


@pytest.fixture(scope="module")
def detectors(exported):
    _, folder, _ = exported
    return Detector.load(folder, runtime="torch", cache=None), Detector.load(folder, cache=None)


def _assert_same(reference, candidate):
    assert len(reference) == len(candidate)
    for ref, got in zip(reference, candidate):
        assert len(ref) == len(got) > 0
        assert torch.equal(ref.labels, got.labels)
        assert (ref.boxes - got.boxes).abs().max() < 1e-2  # pixels
        assert (ref.scores - got.scores).abs().max() <= TOLERANCE


def test_export_folder_holds_graphs_card_and_measured_parity(exported):
    source, folder, printed = exported
    assert "decoder" in printed and "same detections: yes" in printed
    export = read_export(folder)
    assert set(export.graphs) == {"image", "decoder", "namer_features", "namer_regions"}
    assert all((folder / "onnx" / f).stat().st_size > 1000 for f in export.graphs.values())
    # The torch side is copied byte for byte, so hashes (and concepts) carry over.
    for part in ("trex2/model.safetensors", "namer/model.safetensors", "trex2/card.json"):
        assert (folder / part).read_bytes() == (source / part).read_bytes()
    assert json.loads((folder / "detector.json").read_text())["onnx"] == "onnx"
    assert export.parity["max_score_diff"] <= TOLERANCE and export.parity["same_detections"]
    assert export.spatial_shapes == ((8, 8), (4, 4), (2, 2))


def test_onnxruntime_matches_torch_on_emojiworld_scenes(detectors):
    reference, onnx = detectors
    assert (reference.runtime, onnx.runtime) == ("torch", "onnxruntime")
    assert reference.model_hash == onnx.model_hash
    scenes = render_scenes(3, size=96)
    images = [s.image for s in scenes]
    # Text is scored by the namer on T-Rex2's boxes; T-Rex2 alone scores the text of a category with a negative.
    kwargs = dict(text=["cat", "dog face", "red apple"], threshold=0.0)
    _assert_same(reference.predict(images, **kwargs), onnx.predict(images, **kwargs))
    kwargs = dict(text="cat", negatives="dog", threshold=0.0)
    _assert_same(reference.predict(images, **kwargs), onnx.predict(images, **kwargs))
    # Exemplars: a box on the searched image (T-Rex2's prompt encoder on onnxruntime's tokens) and
    # boxes on another image (matched by both T-Rex2 and the namer).
    box = [int(v) for v in scenes[0].objects[0].box_xyxy]
    kwargs = dict(boxes=[box], threshold=0.0)
    _assert_same(reference.predict(images[0], **kwargs), onnx.predict(images[0], **kwargs))
    kwargs = dict(boxes=[box], prompt_images=images[0], threshold=0.0)
    _assert_same(reference.predict(images[1:], **kwargs), onnx.predict(images[1:], **kwargs))


def test_concepts_made_after_export_work_in_both_runtimes(detectors):
    reference, onnx = detectors
    scenes = render_scenes(2, size=96, seed=5)
    box = [int(v) for v in scenes[0].objects[0].box_xyxy]
    made_in_onnx = onnx.make_concept("thing", boxes=[box], prompt_images=scenes[0].image)
    made_in_torch = reference.make_concept("thing", boxes=[box], prompt_images=scenes[0].image)
    assert (made_in_onnx.embedding - made_in_torch.embedding).abs().max() < 1e-4
    assert (made_in_onnx.namer_embedding - made_in_torch.namer_embedding).abs().max() < 1e-4
    _assert_same(reference.predict(scenes[1].image, concepts=made_in_onnx, threshold=0.0),
                 onnx.predict(scenes[1].image, concepts=made_in_torch, threshold=0.0))


def test_cli_detects_with_the_export(tmp_path, exported):
    _, folder, _ = exported
    scene = render_scenes(1, size=96)[0]
    scene.image.save(tmp_path / "scene.png")
    assert main(["detect", str(tmp_path / "scene.png"), "--model", str(folder), "--text", "cat, dog",
                 "--out", str(tmp_path / "det")]) == 0
    assert list((tmp_path / "det").glob("*.json"))


@pytest.mark.parametrize("argv, message", [
    (["export", "default", "--format", "tflite", "--out", "{tmp}/x"], "unknown export format 'tflite'"),
    (["export", "{tmp}/missing", "--out", "{tmp}/x"], "no such detector folder"),
    (["export", "{source}", "--out", "{nonempty}"], "exists and is not an empty folder"),
    (["export", "{regionclip}", "--out", "{tmp}/x"], "only T-Rex2 detectors export"),
])
def test_bad_input_is_a_one_line_error(tmp_path, exported, capsys, argv, message):
    from tiny_detector import build_tiny_detector

    source, _, _ = exported
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    regionclip = build_tiny_detector(tmp_path / "rc") if "{regionclip}" in argv else tmp_path / "rc"
    argv = [a.format(tmp=tmp_path, source=source, nonempty=tmp_path / "full", regionclip=regionclip) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_loading_without_onnxruntime_says_how_to_install(exported, monkeypatch):
    _, folder, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(RegionPromptError, match=r"pip install 'regionprompt\[onnx\]'"):
        Detector.load(folder, cache=None)
    assert Detector.load(folder, runtime="torch", cache=None).runtime == "torch"


def test_graphs_from_other_weights_are_refused(exported, tmp_path):
    import shutil

    _, folder, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "onnx" / "export.json").read_text())
    manifest["weights_hash"] = "0" * 64
    (copy / "onnx" / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="export again"):
        Detector.load(copy, cache=None)
    with pytest.raises(CheckpointError, match="not an ONNX export"):
        Detector.load(folder.parent / "tiny", runtime="onnx", cache=None)


@pytest.mark.slow
def test_default_model_export_finds_prompts_given_after_export(tmp_path):
    """The shipped model, exported; text and a concept that did not exist at export time find real objects."""
    result = export_detector("default", tmp_path / "default-onnx", parity_scenes=0)  # compared below instead
    reference, onnx = (Detector.load(result.folder, runtime="torch", cache=None),
                       Detector.load(result.folder, cache=None))
    renderer = SceneRenderer.default(SceneConfig(size=320, min_objects=3, max_objects=5))
    names = {c.id: c.name for c in renderer.concepts}
    scenes = [renderer.render("test", i, 1) for i in range(4)]
    found = 0
    for scene in scenes:
        phrases = list(dict.fromkeys(names[o.concept_id] for o in scene.objects))
        [ref] = reference.predict(scene.image, text=phrases, threshold=0.2)
        [got] = onnx.predict(scene.image, text=phrases, threshold=0.2)
        _assert_same([ref], [got]) if len(ref) else None
        for obj in scene.objects:
            truth = torch.tensor([obj.box_xyxy], dtype=torch.float32)
            hits = got[got.labels == phrases.index(names[obj.concept_id])]
            if len(hits) and float(_iou(hits.boxes, truth).max()) >= 0.5:
                found += 1
    assert found >= 3  # text prompts chosen after the export find real objects
    # A concept from one box, made after the export, finds the object again on its own scene.
    obj = scenes[0].objects[0]
    concept = onnx.make_concept("picked", boxes=[list(obj.box_xyxy)], prompt_images=scenes[0].image)
    [got] = onnx.predict(scenes[0].image, concepts=concept, threshold=0.2)
    assert float(_iou(got.boxes, torch.tensor([obj.box_xyxy], dtype=torch.float32)).max()) >= 0.5


def _iou(boxes: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(boxes, truth)[:, 0]
