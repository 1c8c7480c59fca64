"""`regionprompt detect` and `regionprompt label` end to end with a real (tiny, random) detector folder."""

from __future__ import annotations

import json

import pytest
import torch
from detector_fixtures import build_detector_folder, render_scenes
from PIL import Image

from regionprompt.api import Detector
from regionprompt.autolabel import JOURNAL_FILE, STATE_DIR
from regionprompt.cli import main
from regionprompt.data.coco import read_coco
from regionprompt.data.yolo import read_yolo

COMMON = ["--cache", "none", "--threshold", "0.2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)  # the machine's two cores are shared; one thread avoids oversubscription
    return build_detector_folder(tmp_path_factory.mktemp("detector"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four rendered scenes in nested folders, one corrupt PNG and one non-image file."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i, scene in enumerate(render_scenes(4)):
        scene.image.save(root / ("sub" if i % 2 else ".") / f"scene_{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return root


def test_detect_writes_annotated_images_and_json(folder, images, tmp_path, capsys):
    out = tmp_path / "out"
    first, second = images / "scene_0.png", images / "sub" / "scene_1.png"
    rc = main(["detect", str(first), str(second), "--text", "dog, red apple", "--model", str(folder),
               "--out", str(out), *COMMON])
    assert rc == 0
    for stem in ("scene_0", "scene_1"):
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["names"] == ["dog", "red apple"] and (data["width"], data["height"]) == (128, 128)
        assert all(d["score"] >= 0.2 and d["name"] in data["names"] for d in data["detections"])
        with Image.open(out / f"{stem}.png") as annotated:
            assert annotated.size == (128, 128)
    assert "detections" in capsys.readouterr().out


def test_detect_visual_prompts_match_the_api(folder, images, tmp_path):
    out = tmp_path / "out"
    first, second = images / "scene_0.png", images / "scene_2.png"
    rc = main(["detect", str(second), "--box", "10,10,60,60:thing", "--point", "90,90:thing", "--box-image", str(first),
               "--negative-box", "70,5,120,40", "--text", "thing", "--model", str(folder), "--out", str(out), *COMMON])
    assert rc == 0
    data = json.loads((out / "scene_2.json").read_text())
    assert data["names"] == ["thing"] and data["prompts"][0]["kind"] == "mixed"
    [expected] = Detector.load(folder, cache=None).predict(
        str(second), text="thing", boxes=[{"box": (10, 10, 60, 60), "label": "thing"}],
        points=[{"point": (90, 90), "label": "thing"}], prompt_images=str(first), negatives=[(70, 5, 120, 40)],
        threshold=0.2)
    assert [d["score"] for d in data["detections"]] == [round(s, 5) for s in expected.scores.tolist()]


@pytest.mark.parametrize("args, message", [
    ([], "no prompt given"),
    (["--box", "1,2,3"], "expected X1,Y1,X2,Y2"),
    (["--box", "100,100,400,400"], "outside"),
    (["--text", "dog", "--concept", "nope"], "unknown concept"),
])
def test_detect_errors_are_one_line(folder, images, tmp_path, capsys, args, message):
    rc = main(["detect", str(images / "scene_0.png"), *args, "--model", str(folder), "--out", str(tmp_path / "o"),
               "--concepts-db", str(tmp_path / "lib.sqlite"), *COMMON])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_detect_missing_model(images, tmp_path, capsys):
    rc = main(["detect", str(images / "scene_0.png"), "--text", "dog", "--model", str(tmp_path / "none"),
               "--out", str(tmp_path / "o"), *COMMON])
    assert rc == 2 and "no such detector folder" in capsys.readouterr().err


def label(folder, images, out, *extra):
    return main(["label", str(images), "--text", "dog, red apple", "--model", str(folder), "--out", str(out), *COMMON,
                 *extra])


def interrupt_after(monkeypatch, calls: int) -> None:
    """Make Detector.predict raise KeyboardInterrupt (Ctrl-C) after ``calls`` successful calls."""
    original = Detector.predict
    count = {"n": 0}

    def predict(self, *args, **kwargs):
        if count["n"] >= calls:
            raise KeyboardInterrupt
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "predict", predict)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_label_resumes_to_the_same_dataset(folder, images, tmp_path, monkeypatch, fmt, capsys):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert label(folder, images, whole, "--format", fmt) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert label(folder, images, resumed, "--format", fmt) == 130
    journal = resumed / STATE_DIR / JOURNAL_FILE
    done = [json.loads(line)["file"] for line in journal.read_text().splitlines()]
    assert 2 <= len(done) < 5
    # A kill in the middle of a write leaves a torn last line; the rerun must drop it.
    with journal.open("a") as handle:
        handle.write('{"file": "sub/scene_3.png", "status": "ok", "wid')
    assert label(folder, images, resumed, "--format", fmt) == 0
    assert "from an earlier run" in capsys.readouterr().out
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(r["file"] for r in lines) == sorted(
        ["broken.png", "scene_0.png", "scene_2.png", "sub/scene_1.png", "sub/scene_3.png"])
    if fmt == "coco":
        assert (resumed / "annotations.json").read_bytes() == (whole / "annotations.json").read_bytes()
        dataset = read_coco(resumed / "annotations.json").data
        assert [i.file_name for i in dataset.images] == ["scene_0.png", "scene_2.png", "sub/scene_1.png",
                                                          "sub/scene_3.png"]
        assert [c.name for c in dataset.categories] == ["dog", "red apple"]
    else:
        for path in sorted((whole / "labels").rglob("*.txt")):
            assert (resumed / path.relative_to(whole)).read_text() == path.read_text()
        assert len(list((resumed / "labels").rglob("*.txt"))) == 4
        dataset = read_yolo(resumed / "data.yaml", split="train").data
        assert len(dataset.images) == 4
    report = json.loads((resumed / "label_report.json").read_text())
    assert report["images"] == 5 and report["labelled"] == 4 and report["resumed"] >= 2
    assert [u["file"] for u in report["unreadable"]] == ["broken.png"]
    assert report == {**json.loads((whole / "label_report.json").read_text()), "resumed": report["resumed"]}


def test_label_refuses_other_settings_and_unplaced_boxes(folder, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert label(folder, images, out) == 0
    capsys.readouterr()
    rc = main(["label", str(images), "--text", "cat", "--model", str(folder), "--out", str(out), *COMMON])
    assert rc == 2 and "other settings (concepts differ)" in capsys.readouterr().err
    rc = main(["label", str(images), "--box", "1,1,9,9", "--model", str(folder), "--out", str(tmp_path / "o2"), *COMMON])
    assert rc == 2 and "--box-image" in capsys.readouterr().err


def test_label_with_exemplar_from_another_image(folder, images, tmp_path):
    out = tmp_path / "out"
    rc = main(["label", str(images), "--box", "10,10,60,60", "--box-image", str(images / "scene_0.png"),
               "--visual-label", "thing", "--model", str(folder), "--out", str(out), *COMMON])
    assert rc == 0
    dataset = read_coco(out / "annotations.json").data
    assert [c.name for c in dataset.categories] == ["thing"] and len(dataset.images) == 4


def test_label_gives_each_box_one_label_unless_all_labels(images, tmp_path):
    """With the shipped model and many names, `label` writes each object once (class-agnostic NMS); with
    --all-labels one box may carry several categories."""
    from torchvision.ops import box_iou

    names = "dog, red apple, cat, potato, umbrella, hippopotamus, banana, rocket"
    argv = ["label", str(images), "--text", names, "--model", "default", "--cache", "none", "--threshold", "0.02"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--all-labels", "--out", str(tmp_path / "all")]) == 0
    one = read_coco(tmp_path / "one" / "annotations.json").data
    every = read_coco(tmp_path / "all" / "annotations.json").data
    assert len(every.annotations) > len(one.annotations) > 0
    for image in one.images:
        xywh = torch.tensor([a.bbox for a in one.annotations if a.image_id == image.id]).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        if len(boxes) > 1:
            assert float(box_iou(boxes, boxes).fill_diagonal_(0).max()) <= 0.7 + 1e-3
        assert all(0 <= a.bbox[0] and 0 <= a.bbox[1] and a.bbox[0] + a.bbox[2] <= image.width + 0.01
                   and a.bbox[1] + a.bbox[3] <= image.height + 0.01 for a in one.annotations if a.image_id == image.id)


def test_default_model_states_its_scope(images, tmp_path, capsys):
    rc = main(["detect", str(images / "scene_0.png"), "--text", "dog", "--cache", "none", "--out", str(tmp_path / "o")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "knows EmojiWorld" in err and "not real photos" in err


def test_detect_draws_the_prompts_on_the_image_they_were_drawn_on(folder, images, tmp_path):
    out = tmp_path / "out"
    first = images / "scene_0.png"
    rc = main(["detect", str(first), "--box", "10,10,60,60", "--point", "90,90", "--negative-box", "70,5,120,40",
               "--model", str(folder), "--out", str(out), *COMMON])
    assert rc == 0
    with Image.open(out / "scene_0.png") as annotated:
        pixels = annotated.convert("RGB")
        assert pixels.getpixel((10, 35)) == (255, 255, 255)  # the exemplar box, white over black
        assert pixels.getpixel((12, 35)) == (0, 0, 0)  # (PIL draws outlines inwards)
        assert pixels.getpixel((70, 20)) == (220, 30, 30)  # the negative box, red
        assert pixels.getpixel((90, 90)) == (255, 255, 255)  # the point
