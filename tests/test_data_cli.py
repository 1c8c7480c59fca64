"""``regionprompt convert`` and ``regionprompt dataset check`` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regionprompt.cli import main
from regionprompt.data.coco import read_coco


def test_convert_coco_to_yolo_and_back(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "coco_mini/annotations/instances_val2017.json"
    assert main(["-q", "convert", str(src), "--from", "coco", "--to", "yolo", "--out", str(tmp_path / "y")]) == 0
    out = capsys.readouterr().out
    assert "val2017: wrote 79 images, 619 boxes, 80 categories, 5 iscrowd boxes left out" in out
    assert len(list((tmp_path / "y/images/val2017").iterdir())) == 79
    assert main(["-q", "convert", str(tmp_path / "y"), "--from", "yolo", "--to", "coco", "--out", str(tmp_path / "c"), "--copy-images"]) == 0
    back = read_coco(tmp_path / "c/annotations/instances_val2017.json", image_dir=tmp_path / "c/val2017").data
    assert len(back.annotations) == 619 and back.category_by_id()[90].name == "toothbrush"


def test_check_clean_and_dirty(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "coco_mini/annotations/instances_val2017.json"
    assert main(["dataset", "check", str(src), "--format", "coco"]) == 0
    assert "no problems found" in capsys.readouterr().out
    data = json.loads(src.read_text())
    data["annotations"][0]["bbox"] = [0, 0, 0, 10]
    data["annotations"][1]["category_id"] = 1000
    data["images"][0]["file_name"] = "not_there.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    images = shared_data / "coco_mini/val2017"
    assert main(["dataset", "check", str(bad), "--format", "coco", "--images", str(images)]) == 1
    out = capsys.readouterr().out
    for text in ("zero or negative area box: 1", "unknown category id: 1", "missing image file: 1", "not_there.jpg"):
        assert text in out
    assert main(["dataset", "check", str(bad), "--format", "coco", "--images", str(images), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)[0]
    assert report["ok"] is False and report["counts"]["unknown category id"] == 1
    assert main(["dataset", "check", str(shared_data / "coco128_yolo"), "--format", "yolo", "--split", "val"]) == 0


def test_check_malformed_json_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [1, 2')
    # A file that cannot be parsed is an error (exit 2, one line on stderr), not a report.
    assert main(["dataset", "check", str(bad), "--format", "coco"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.json:1:" in err and err.count("\n") == 1
    assert main(["dataset", "check", str(tmp_path / "nope.json"), "--format", "coco"]) == 2
    assert "nope.json: not found" in capsys.readouterr().err


def test_convert_strict_fails_cleanly_and_skip_invalid_counts(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "coco128_yolo"
    out = tmp_path / "c"
    args = ["-q", "convert", str(src), "--from", "yolo", "--to", "coco", "--out", str(out), "--no-images", "--split", "train"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "label file has no image" in err and "Traceback" not in err
    assert not out.exists(), "strict mode must not write anything"
    assert main([*args, "--skip-invalid"]) == 0
    printed = capsys.readouterr().out
    assert "dropped: 12 label lines" in printed and "train2017: wrote 128 images, 929 boxes" in printed


def test_convert_needs_images_or_no_images(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path = tmp_path / "ann" / "instances_val2017.json"
    json_path.parent.mkdir()
    json_path.write_bytes((shared_data / "coco_mini/annotations/instances_val2017.json").read_bytes())
    assert main(["convert", str(json_path), "--from", "coco", "--to", "yolo", "--out", str(tmp_path / "y")]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["-q", "convert", str(json_path), "--from", "coco", "--to", "yolo", "--out", str(tmp_path / "y"), "--no-images"]) == 0
    assert len(list((tmp_path / "y/labels/val2017").glob("*.txt"))) == 79


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["convert", "--help"], ["dataset", "check", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    assert "--skip-invalid" in capsys.readouterr().out
