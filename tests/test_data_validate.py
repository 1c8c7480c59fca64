"""Bad dataset files give the right report entries; strict mode raises, skip_invalid drops and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from regionprompt.data.coco import read_coco
from regionprompt.data.validate import ProblemKind
from regionprompt.data.yolo import read_yolo
from regionprompt.errors import DatasetError


def _good_coco() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "dog", "split": "base"}, {"id": 2, "name": "cat", "split": "novel"}],
    }


def _write(tmp_path: Path, data: dict) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), "red").save(images / "a.jpg")
    Image.new("RGB", (32, 32), "blue").save(images / "b.png")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, images


def test_clean_file_has_empty_report(tmp_path: Path) -> None:
    path, images = _write(tmp_path, _good_coco())
    result = read_coco(path, image_dir=images)
    assert result.report.ok and result.report.num_problems == 0
    assert len(result.data.annotations) == 2


@pytest.mark.parametrize(
    ("mutate", "kind", "dropped"),
    [
        (lambda d: d["annotations"].append({"id": 12, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}), ProblemKind.UNKNOWN_CATEGORY, {"annotations": 1}),
        (lambda d: d["annotations"].append({"id": 12, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]}), ProblemKind.UNKNOWN_IMAGE, {"annotations": 1}),
        (lambda d: d["annotations"].append({"id": 12, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 7]}), ProblemKind.ZERO_AREA, {"annotations": 1}),
        (lambda d: d["annotations"].append({"id": 12, "image_id": 1, "category_id": 1, "bbox": [5, 5, -3, 7]}), ProblemKind.ZERO_AREA, {"annotations": 1}),
        (lambda d: d["annotations"].append({"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}), ProblemKind.DUPLICATE_ID, {"annotations": 1}),
        (lambda d: d["images"].append({"id": 1, "file_name": "b.png", "width": 32, "height": 32}), ProblemKind.DUPLICATE_ID, {"images": 1}),
        (lambda d: d["annotations"].append({"id": 12, "image_id": 1, "category_id": 1, "bbox": "1,1,5,5"}), ProblemKind.WRONG_TYPE, {"annotations": 1}),
        (lambda d: d["annotations"].append({"id": "13", "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}), ProblemKind.WRONG_TYPE, {"annotations": 1}),
        (lambda d: d["annotations"].append({"id": 14, "image_id": 1, "bbox": [1, 1, 5, 5]}), ProblemKind.MISSING_FIELD, {"annotations": 1}),
        (lambda d: d["images"].append({"id": 3, "file_name": "missing.jpg", "width": 10, "height": 10}), ProblemKind.MISSING_IMAGE, {"images": 1}),
        (lambda d: d["images"].append({"id": 3, "file_name": "../escape.jpg", "width": 10, "height": 10}), ProblemKind.BAD_FILE_NAME, {"images": 1}),
        (lambda d: d["images"][1].update(width=33), ProblemKind.SIZE_MISMATCH, {"images": 1, "annotations": 1}),
        (lambda d: d["categories"].append({"id": 3, "name": "dog"}), ProblemKind.DUPLICATE_NAME, {"categories": 1}),
    ],
)
def test_each_problem_is_reported_and_skipped(tmp_path: Path, mutate, kind: ProblemKind, dropped: dict) -> None:
    data = _good_coco()
    mutate(data)
    path, images = _write(tmp_path, data)
    with pytest.raises(DatasetError) as excinfo:
        read_coco(path, image_dir=images)
    message = str(excinfo.value)
    assert kind.value in message and str(path) in message and "--skip-invalid" in message
    result = read_coco(path, image_dir=images, skip_invalid=True)
    assert result.report.counts == {kind: 1}
    assert result.report.dropped == dropped
    assert len(result.data.annotations) == len(data["annotations"]) - dropped.get("annotations", 0)
    assert len(result.data.images) == len(data["images"]) - dropped.get("images", 0)


def test_strict_message_names_ids_and_files(tmp_path: Path) -> None:
    data = _good_coco()
    data["annotations"].append({"id": 77, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5]})
    path, _ = _write(tmp_path, data)
    with pytest.raises(DatasetError, match=r"annotation 77 \(image 2 b\.png\): refers to category id 5"):
        read_coco(path)


def test_box_outside_is_clipped_when_skipping(tmp_path: Path) -> None:
    data = _good_coco()
    data["annotations"][0]["bbox"] = [50, 40, 30, 20]  # reaches x=80 > 64+1, y=60 > 48+1
    data["annotations"][1]["bbox"] = [-0.5, 0, 32.9, 32.5]  # within the 1 px tolerance: fine
    path, images = _write(tmp_path, data)
    with pytest.raises(DatasetError, match="box outside image"):
        read_coco(path, image_dir=images)
    result = read_coco(path, image_dir=images, skip_invalid=True)
    assert result.report.counts == {ProblemKind.BOX_OUTSIDE: 1}
    assert result.report.clipped == 1 and not result.report.dropped
    assert result.data.annotations[0].bbox == (50.0, 40.0, 14.0, 8.0)
    assert result.data.annotations[1].bbox == (-0.5, 0.0, 32.9, 32.5)


def test_box_entirely_outside_is_dropped(tmp_path: Path) -> None:
    data = _good_coco()
    data["annotations"][0]["bbox"] = [100, 100, 5, 5]
    path, _ = _write(tmp_path, data)
    result = read_coco(path, skip_invalid=True)
    assert result.report.counts == {ProblemKind.BOX_OUTSIDE: 1} and result.report.dropped == {"annotations": 1}


def test_unreadable_image(tmp_path: Path) -> None:
    path, images = _write(tmp_path, _good_coco())
    (images / "a.jpg").write_bytes(b"this is not a jpeg")
    result = read_coco(path, image_dir=images, skip_invalid=True)
    assert result.report.counts == {ProblemKind.UNREADABLE_IMAGE: 1}
    assert result.report.dropped == {"images": 1, "annotations": 1}
    assert [img.id for img in result.data.images] == [2]


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    for skip in (False, True):  # nothing to skip to: fatal in both modes
        with pytest.raises(DatasetError, match=r"broken\.json:3:19: invalid JSON"):
            read_coco(path, skip_invalid=skip)


@pytest.mark.parametrize("payload", ["[1, 2]", '{"images": []}', '{"images": {}, "annotations": [], "categories": []}'])
def test_wrong_top_level_structure(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(payload)
    with pytest.raises(DatasetError, match="malformed file"):
        read_coco(path, skip_invalid=True)


def test_many_problems_are_counted_exactly_with_few_examples(tmp_path: Path) -> None:
    data = _good_coco()
    data["annotations"] += [{"id": 100 + i, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]} for i in range(500)]
    path, _ = _write(tmp_path, data)
    report = read_coco(path, skip_invalid=True).report
    assert report.counts[ProblemKind.UNKNOWN_CATEGORY] == 500
    assert len(report.examples[ProblemKind.UNKNOWN_CATEGORY]) == 20
    summary = report.summary(max_examples=3)
    assert "... and 497 more" in summary and summary.count("annotation 1") == 3


def _yolo(tmp_path: Path, lines: str, *, extra_label: str | None = None) -> Path:
    root = tmp_path / "yolo"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(root / "images" / "val" / "img1.jpg")
    Image.new("RGB", (20, 20)).save(root / "images" / "val" / "img2.png")
    (root / "labels" / "val" / "img1.txt").write_text(lines)
    if extra_label is not None:
        (root / "labels" / "val" / "orphan.txt").write_text(extra_label)
    (root / "data.yaml").write_text("path: .\nval: images/val\nnames: [dog, cat]\n")
    return root


def test_yolo_clean(tmp_path: Path) -> None:
    root = _yolo(tmp_path, "0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.2 0.2\n")
    result = read_yolo(root, split="val")
    assert result.report.ok
    ds = result.data
    assert [img.file_name for img in ds.images] == ["img1.jpg", "img2.png"]
    assert [img.id for img in ds.images] == [1, 2]  # stems are not numbers: ids in file-name order
    assert [(img.width, img.height) for img in ds.images] == [(100, 50), (20, 20)]
    assert ds.annotations[0].bbox == pytest.approx((40.0, 15.0, 20.0, 20.0))
    assert [c.name for c in ds.categories] == ["dog", "cat"] and [c.id for c in ds.categories] == [1, 2]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("0 0.5 0.5 0.2", ProblemKind.YOLO_COLUMNS),
        ("0 0.5 0.5 0.2 0.2 0.3 0.3", ProblemKind.YOLO_COLUMNS),
        ("0 0.5 abc 0.2 0.2", ProblemKind.YOLO_NOT_NUMERIC),
        ("0 0.5 nan 0.2 0.2", ProblemKind.YOLO_NOT_NUMERIC),
        ("0 1.5 0.5 0.2 0.2", ProblemKind.YOLO_OUT_OF_RANGE),
        ("5 0.5 0.5 0.2 0.2", ProblemKind.UNKNOWN_CLASS),
        ("-1 0.5 0.5 0.2 0.2", ProblemKind.UNKNOWN_CLASS),
        ("0.5 0.5 0.5 0.2 0.2", ProblemKind.UNKNOWN_CLASS),
        ("0 0.5 0.5 0 0.2", ProblemKind.ZERO_AREA),
        ("1 0.95 0.5 0.3 0.2", ProblemKind.BOX_OUTSIDE),
    ],
)
def test_yolo_bad_lines(tmp_path: Path, line: str, kind: ProblemKind) -> None:
    root = _yolo(tmp_path, f"0 0.5 0.5 0.2 0.4\n{line}\n")
    with pytest.raises(DatasetError) as excinfo:
        read_yolo(root, split="val")
    assert kind.value in str(excinfo.value)
    if kind != ProblemKind.BOX_OUTSIDE:  # a YOLO line problem names its file and line
        assert "img1.txt:2" in str(excinfo.value)
    result = read_yolo(root, split="val", skip_invalid=True)
    assert result.report.counts == {kind: 1}
    clipped = kind in (ProblemKind.BOX_OUTSIDE, ProblemKind.YOLO_OUT_OF_RANGE)
    assert result.report.clipped == (1 if clipped and kind == ProblemKind.BOX_OUTSIDE else 0)
    assert len(result.data.annotations) == (2 if kind == ProblemKind.BOX_OUTSIDE else 1)


def test_yolo_label_without_image_and_unreadable_image(tmp_path: Path) -> None:
    root = _yolo(tmp_path, "0 0.5 0.5 0.2 0.4\n", extra_label="1 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n")
    (root / "images" / "val" / "img2.png").write_bytes(b"\x89PNG broken")
    result = read_yolo(root, split="val", skip_invalid=True)
    assert result.report.counts == {ProblemKind.MISSING_IMAGE: 1, ProblemKind.UNREADABLE_IMAGE: 1}
    assert result.report.dropped == {"images": 1, "label lines": 2}
    assert "orphan.txt" in result.report.summary()


def test_yolo_bad_yaml(tmp_path: Path) -> None:
    root = _yolo(tmp_path, "")
    (root / "data.yaml").write_text("path: .\nval: [images/val\nnames: [dog]\n")
    with pytest.raises(DatasetError, match=r"data\.yaml:\d+:\d+: invalid YAML"):
        read_yolo(root, split="val")
    (root / "data.yaml").write_text("path: .\nval: images/val\nnames: [dog, dog]\n")
    with pytest.raises(DatasetError, match="duplicate class names"):
        read_yolo(root, split="val")
    (root / "data.yaml").write_text("path: .\nval: images/val\nnames: [dog]\n")
    with pytest.raises(DatasetError, match="no split 'train'"):
        read_yolo(root, split="train")
