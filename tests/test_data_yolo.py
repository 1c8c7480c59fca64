"""YOLO I/O and COCO <-> YOLO round trips on the real data (coco_mini, coco128_yolo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from regionprompt.data.coco import read_coco, write_coco
from regionprompt.data.convert import convert_dataset, load_categories
from regionprompt.data.model import Category, DetectionDataset, ImageRecord
from regionprompt.data.validate import ProblemKind
from regionprompt.data.yolo import category_index, read_yolo, write_yolo
from regionprompt.errors import DatasetError

COCO_VAL = "coco_mini/annotations/instances_val2017.json"


def max_box_error(a: DetectionDataset, b: DetectionDataset, *, skip_crowd: bool) -> float:
    """Largest corner difference (px) between matching boxes, matched by file name, category name and order."""
    names_a, names_b = {c.id: c.name for c in a.categories}, {c.id: c.name for c in b.categories}
    files_b = {img.file_name: img.id for img in b.images}
    by_a, by_b = a.annotations_by_image(), b.annotations_by_image()
    worst = 0.0
    for img in a.images:
        anns_a = [x for x in by_a[img.id] if not (skip_crowd and x.iscrowd)]
        anns_b = by_b[files_b[img.file_name]]
        assert [names_a[x.category_id] for x in anns_a] == [names_b[x.category_id] for x in anns_b], img.file_name
        for x, y in zip(anns_a, anns_b):
            worst = max(worst, *(abs(p - q) for p, q in zip(x.xyxy, y.xyxy)))
    return worst


@pytest.fixture(scope="module")
def coco_val(shared_data: Path) -> DetectionDataset:
    return read_coco(shared_data / COCO_VAL).data


def test_read_coco128(shared_data: Path) -> None:
    val = read_yolo(shared_data / "coco128_yolo", split="val")
    assert val.report.ok
    assert len(val.data.images) == 128 and len(val.data.annotations) == 898  # README manifest
    assert len({a.category_id for a in val.data.annotations}) == 73
    assert val.data.images[0].id == 139 and val.data.images[0].file_name == "000000000139.jpg"
    # The train split really has 2 label files whose images were not copied (941 - 929 = 12 boxes).
    with pytest.raises(DatasetError, match="000000000656.txt: label file has no image"):
        read_yolo(shared_data / "coco128_yolo", split="train")
    train = read_yolo(shared_data / "coco128_yolo", split="train2017", skip_invalid=True)
    assert train.report.counts == {ProblemKind.MISSING_IMAGE: 2} and train.report.dropped == {"label lines": 12}
    assert len(train.data.images) == 128 and len(train.data.annotations) == 929


def test_coco_yolo_coco_roundtrip_within_1px(shared_data: Path, coco_val: DetectionDataset, tmp_path: Path) -> None:
    # iscrowd boxes are left out of YOLO output by default (YOLO cannot mark them), so compare without them.
    export = write_yolo(coco_val, tmp_path / "y", split="val2017", image_dir=shared_data / "coco_mini" / "val2017")
    assert export.crowd_skipped == 5 and export.boxes == 619 and export.images == 79
    back = read_yolo(tmp_path / "y", split="val").data
    assert back.categories == coco_val.categories  # ids, names, supercategories restored from data.yaml
    assert [(i.id, i.file_name, i.width, i.height) for i in back.images] == sorted(
        (i.id, i.file_name, i.width, i.height) for i in coco_val.images
    )
    assert len(back.annotations) == 619
    assert max_box_error(coco_val, back, skip_crowd=True) <= 1.0
    # Images are hardlinked when possible (same file system as the data), else copied: same bytes either way.
    linked = tmp_path / "y" / "images" / "val2017" / coco_val.images[0].file_name
    assert linked.read_bytes() == (shared_data / "coco_mini" / "val2017" / coco_val.images[0].file_name).read_bytes()


def test_roundtrip_with_crowd_boxes_and_without_category_metadata(shared_data: Path, coco_val: DetectionDataset, tmp_path: Path) -> None:
    write_yolo(coco_val, tmp_path / "y", split="val2017", image_dir=shared_data / "coco_mini" / "val2017", include_crowd=True)
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    del data["coco_categories"]  # as a YOLO dataset made by another tool would be
    (tmp_path / "y" / "data.yaml").write_text(yaml.safe_dump(data))
    plain = read_yolo(tmp_path / "y", split="val2017")
    assert [c.id for c in plain.data.categories] == list(range(1, 81))  # contiguous index + 1
    restored = read_yolo(tmp_path / "y", split="val2017", categories=coco_val.categories).data
    assert [c.id for c in restored.categories] == [c.id for c in coco_val.sorted_categories()]
    assert len(restored.annotations) == 624
    assert max_box_error(coco_val, restored, skip_crowd=False) <= 1.0


def test_yolo_coco_yolo_keeps_labels(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "coco128_yolo"
    categories = load_categories(shared_data / COCO_VAL)  # restore the sparse COCO ids by name
    converted = convert_dataset(src, src_format="yolo", dst_format="coco", out=tmp_path / "c", split="val", categories=categories, images="none")
    coco_json = converted[0].path
    assert coco_json == tmp_path / "c" / "annotations" / "instances_val2017.json"
    coco = read_coco(coco_json).data
    assert {c.name for c in coco.categories} == set(yaml.safe_load((src / "data.yaml").read_text())["names"].values())
    assert coco.category_by_id()[90].name == "toothbrush"
    write_yolo(coco, tmp_path / "y", split="val2017", image_dir=src / "images" / "val2017", images="copy")
    original = sorted((src / "labels" / "val2017").glob("*.txt"))
    assert len(original) == 128
    for label in original:
        before = [line.split() for line in label.read_text().splitlines() if line.strip()]
        after = [line.split() for line in (tmp_path / "y" / "labels" / "val2017" / label.name).read_text().splitlines()]
        assert [row[0] for row in before] == [row[0] for row in after], label.name
        for row_b, row_a in zip(before, after):
            assert [float(v) for v in row_a[1:]] == pytest.approx([float(v) for v in row_b[1:]], abs=2e-6), label.name
    copied = tmp_path / "y" / "images" / "val2017" / "000000000139.jpg"
    assert copied.stat().st_ino != (src / "images" / "val2017" / "000000000139.jpg").stat().st_ino


def test_category_index_orders_by_id(coco_val: DetectionDataset) -> None:
    index = category_index(coco_val.categories)
    assert index[1] == 0 and index[90] == 79 and sorted(index.values()) == list(range(80))


def test_data_yaml_merges_splits_deterministically(coco_val: DetectionDataset, tmp_path: Path) -> None:
    write_yolo(coco_val, tmp_path / "a", split="val2017", images="none")
    write_yolo(coco_val, tmp_path / "a", split="train2017", images="none")
    write_yolo(coco_val, tmp_path / "b", split="train2017", images="none")
    write_yolo(coco_val, tmp_path / "b", split="val2017", images="none")
    text = (tmp_path / "a" / "data.yaml").read_text()
    assert text == (tmp_path / "b" / "data.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["train"] == "images/train2017" and data["val"] == "images/val2017" and data["names"][79] == "toothbrush"
    other = DetectionDataset(coco_val.images, (), coco_val.categories[:3])
    with pytest.raises(DatasetError, match="different class names"):
        write_yolo(other, tmp_path / "a", split="test", images="none")


def test_convert_coco_to_coco_writes_same_dataset(shared_data: Path, coco_val: DetectionDataset, tmp_path: Path) -> None:
    results = convert_dataset(shared_data / COCO_VAL, src_format="coco", dst_format="coco", out=tmp_path / "c")
    assert results[0].split == "val2017" and results[0].images == 79
    assert read_coco(results[0].path, image_dir=tmp_path / "c" / "val2017").data == coco_val
    assert write_coco(coco_val, tmp_path / "x.json").read_bytes() == results[0].path.read_bytes()
    assert os.path.samefile(tmp_path / "c" / "val2017" / "000000397133.jpg", shared_data / "coco_mini" / "val2017" / "000000397133.jpg") or (
        tmp_path / "c" / "val2017" / "000000397133.jpg"
    ).is_file()


def test_write_yolo_refuses_label_file_clashes(tmp_path: Path) -> None:
    images = [ImageRecord(1, "a.jpg", 10, 10), ImageRecord(2, "a.png", 10, 10)]
    dataset = DetectionDataset(images, (), [Category(1, "dog")])
    with pytest.raises(DatasetError, match="a.txt"):
        write_yolo(dataset, tmp_path, split="val", images="none")


def test_coco128_labels_reproduce_official_coco_boxes(shared_data: Path, coco_val: DetectionDataset) -> None:
    """Independent check of the YOLO reader: coco128's labels were made by another tool from COCO; the
    val2017 images also in coco_mini must give back coco_mini's boxes (sparse ids restored by name)."""
    yolo = read_yolo(shared_data / "coco128_yolo", split="val", categories=coco_val.categories).data
    gt_ids = {img.file_name: img.id for img in coco_val.images}
    common = sorted(gt_ids.keys() & {img.file_name for img in yolo.images})
    assert len(common) == 3
    gt_by, yolo_by = coco_val.annotations_by_image(), yolo.annotations_by_image()
    yolo_ids = {img.file_name: img.id for img in yolo.images}
    for name in common:
        expected, got = gt_by[gt_ids[name]], yolo_by[yolo_ids[name]]
        assert len(expected) == len(got)
        for ann in expected:
            errors = [max(abs(p - q) for p, q in zip(ann.xyxy, other.xyxy)) for other in got if other.category_id == ann.category_id]
            assert errors and min(errors) < 0.01, (name, ann.id)


def test_data_yaml_always_has_val_and_readers_skip_the_repeat(shared_data: Path, coco_val: DetectionDataset,
                                                              tmp_path: Path) -> None:
    """Ultralytics requires `val:`; a dataset with one split names its images there too, and converting
    the folder back reads those images once."""
    from regionprompt.data.convert import read_source
    from regionprompt.data.yolo import read_data_yaml

    small = DetectionDataset(coco_val.images[:3], tuple(a for a in coco_val.annotations if a.image_id in
                                                        {i.id for i in coco_val.images[:3]}), coco_val.categories)
    write_yolo(small, tmp_path / "y", split="train", image_dir=shared_data / "coco_mini" / "val2017")
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data["train"] == data["val"] == "images/train"
    assert read_data_yaml(tmp_path / "y").distinct_splits() == ["train"]
    [source] = read_source(tmp_path / "y", "yolo")
    assert len(source.dataset.images) == 3
    write_yolo(small, tmp_path / "y", split="val", images="none")  # a real val split replaces the stand-in
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["val"] == "images/val"
