"""`regionprompt demo` with a real (tiny, random) detector folder, and its helpers."""

from __future__ import annotations

import json

import pytest
import torch
from detector_fixtures import build_detector_folder
from PIL import Image

from regionprompt.cli import main
from regionprompt.cli.demo import (
    GroundTruth,
    distractor_names,
    find_exemplars,
    correct_detections,
    found_instances,
    interactive_target,
)
from regionprompt.results import Detections
from regionprompt.world.render import SceneRenderer


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    torch.set_num_threads(1)  # the machine's two cores are shared
    monkeypatch.setenv("REGIONPROMPT_CACHE_DIR", str(tmp_path / "cache"))  # no embedding cache outside tmp


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_detector_folder(tmp_path_factory.mktemp("detector"))


def test_demo_writes_images_json_and_summary(folder, tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--model", str(folder), "--images", "2", "--threads", "1",
                 "--threshold", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "text prompts at score >= 0.2: found " in printed and str(out) in printed
    assert "AP50 over these scenes" not in printed  # one protocol: the one the pictures show
    annotations = json.loads((out / "scenes" / "annotations.json").read_text())
    assert len(annotations["images"]) == 2
    for image in annotations["images"]:
        stem = image["file_name"].removesuffix(".png")
        record = json.loads((out / f"{stem}.json").read_text())
        truth = {o["name"] for o in record["ground_truth"]}
        assert truth and set(record["text"]["prompts"]) == truth
        assert len(record["text"]["distractors"]) == 3 and not truth & set(record["text"]["distractors"])
        assert record["interactive"]["prompt"]["label"] in truth
        assert record["generic"]["prompt"]["label"] in truth and record["mixed"]["prompt"]["label"] in truth
        exemplar = record["generic"]["prompt"]["image"]
        assert (out / exemplar).is_file() and exemplar != record["image"]  # drawn on ANOTHER scene
        for key in ("text", "interactive", "generic", "mixed"):
            for det in record[key]["detections"]:
                assert det["score"] >= 0.2
                x1, y1, x2, y2 = det["box"]
                assert 0 <= x1 < x2 <= image["width"] and 0 <= y1 < y2 <= image["height"]
        with Image.open(out / f"{stem}.png") as drawn:
            assert drawn.width > image["width"] and drawn.height > image["height"]  # the four panels
    summary = (out / "summary.md").read_text()
    assert "Protocol: each scene searched for the names of its objects plus 3 absent names" in summary
    assert "- text prompts at score >= 0.2: found " in summary and "drawn detections right" in summary
    assert "- measured quality" in summary and "- AP50 all" not in summary
    assert "interactive visual prompt" in summary and "generic visual prompt" in summary


def test_demo_without_default_model_says_how_to_build_it(monkeypatch, tmp_path, capsys):
    import regionprompt.api

    monkeypatch.setattr(regionprompt.api, "default_model_dir", lambda: tmp_path / "not_installed")
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the default model is not installed")
    assert "regionprompt train default" in lines[0] and "Traceback" not in captured.err
    assert not out.exists()


def test_demo_rejects_a_missing_model_folder(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert "no such detector folder" in capsys.readouterr().err


def _truth(name, box, cid=1):
    return GroundTruth(name, cid, "base", box)


def test_correct_detections_counts_drawn_boxes_on_an_object_of_their_name():
    objects = [_truth("dog", (0, 0, 10, 10)), _truth("cat", (20, 20, 30, 30))]
    dets = Detections(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [1, 1, 9, 9]]),
                      torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([0, 0, 0, 0]), ("dog",), (64, 64))
    assert correct_detections(dets, objects, 0.3) == (1, 3)  # a "dog" on the cat and one on nothing are wrong


def test_found_instances_counts_hits_of_the_right_name():
    objects = [_truth("dog", (10, 10, 50, 50)), _truth("dog", (100, 100, 140, 140)), _truth("cat", (200, 10, 240, 50))]
    dets = Detections(torch.tensor([[11.0, 10, 50, 51], [200, 10, 240, 50], [100, 100, 140, 140]]),
                      torch.tensor([0.9, 0.8, 0.1]), torch.tensor([0, 0, 0]), ("dog",), (320, 320))
    assert found_instances(dets, objects, "dog", 0.3) == (1, 2)  # the third is below the threshold
    assert found_instances(dets, objects, "dog", 0.05) == (2, 2)
    assert found_instances(dets, objects, "cat", 0.05) == (0, 1)  # a "dog" box on the cat does not count


def test_interactive_target_and_distractors():
    objects = [_truth("cat", (0, 0, 90, 90)), _truth("dog", (0, 0, 10, 10)), _truth("dog", (0, 0, 20, 20))]
    assert interactive_target(objects) == objects[2]  # the kind with most copies, its largest copy
    assert interactive_target([]) is None
    names = distractor_names({"cat", "dog"}, ["cat", "dog", "owl", "fox", "bee"], 2, "k")
    assert len(names) == 2 and not {"cat", "dog"} & set(names)
    assert names == distractor_names({"cat", "dog"}, ["cat", "dog", "owl", "fox", "bee"], 2, "k")


def test_exemplars_come_from_another_scene(tmp_path):
    renderer = SceneRenderer.default()
    scene = renderer.render("test", 0, 1)
    path = tmp_path / scene.file_name
    scene.image.save(path)
    objects = {1: [GroundTruth(str(o.concept_id), o.concept_id, "base", tuple(map(float, o.box_xyxy)))
                   for o in scene.labelled_objects]}
    [(image_id, exemplar)] = find_exemplars(objects, {1: path}, tmp_path, seed=1).items()
    assert image_id == 1 and exemplar.image != path and exemplar.image.name.startswith("val_")
    index = int(exemplar.image.name.split("_")[1])
    val = renderer.render("val", index, 2)  # the val scene really holds that kind of object at that box
    assert any(str(o.concept_id) == exemplar.name and tuple(map(float, o.box_xyxy)) == exemplar.box
               for o in val.labelled_objects)
