"""COCO instances I/O on the real coco_mini data, extra fields, atomic deterministic writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regionprompt.data.coco import read_coco, to_coco_dict, write_coco
from regionprompt.data.model import Category, DetectionDataset

COCO_VAL = "coco_mini/annotations/instances_val2017.json"


@pytest.fixture(scope="module")
def coco_val(shared_data: Path) -> DetectionDataset:
    return read_coco(shared_data / COCO_VAL, image_dir=shared_data / "coco_mini" / "val2017").data


def test_read_coco_mini_matches_readme_counts(coco_val: DetectionDataset) -> None:
    # README: 79 images, 624 annotations, 78 categories used (80 listed), 5 iscrowd.
    assert len(coco_val.images) == 79
    assert len(coco_val.annotations) == 624
    assert len(coco_val.categories) == 80
    assert len({a.category_id for a in coco_val.annotations}) == 78
    assert sum(a.iscrowd for a in coco_val.annotations) == 5
    first = coco_val.images[0]
    assert (first.id, first.file_name, first.width, first.height) == (397133, "000000397133.jpg", 640, 427)
    assert "coco_url" in first.extra
    assert all("segmentation" in a.extra for a in coco_val.annotations)


def test_write_read_roundtrip_is_lossless_and_deterministic(shared_data: Path, coco_val: DetectionDataset, tmp_path: Path) -> None:
    original = json.loads((shared_data / COCO_VAL).read_text())
    out = write_coco(coco_val, tmp_path / "a.json")
    written = json.loads(out.read_text())
    for key in ("images", "annotations", "categories"):
        assert [dict(sorted(r.items())) for r in written[key]] == [dict(sorted(r.items())) for r in original[key]], key
    assert written["info"] == original["info"] and written["licenses"] == original["licenses"]
    # Same data -> same bytes; modelled keys come first in a fixed order.
    again = write_coco(read_coco(out).data, tmp_path / "b.json")
    assert out.read_bytes() == again.read_bytes()
    assert list(written["annotations"][0])[:6] == ["id", "image_id", "category_id", "bbox", "area", "iscrowd"]
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_category_extra_fields_survive(coco_val: DetectionDataset, tmp_path: Path) -> None:
    cats = [
        Category(c.id, c.name, c.supercategory, {"split": "novel" if c.id % 4 == 0 else "base", "frequency": "rcf"[c.id % 3], "synonyms": [c.name, c.name + "s"]})
        for c in coco_val.categories
    ]
    dataset = DetectionDataset(coco_val.images, coco_val.annotations, cats, coco_val.extra)
    back = read_coco(write_coco(dataset, tmp_path / "ovd.json", indent=1)).data
    assert back.categories == tuple(cats)
    by_id = back.category_by_id()
    assert by_id[4].extra["split"] == "novel" and by_id[1].extra["split"] == "base"
    assert by_id[3].extra["frequency"] == "r" and by_id[1].extra["synonyms"] == ["person", "persons"]


def test_boxes_accessor_gives_xywh_boxes(coco_val: DetectionDataset) -> None:
    img = coco_val.images[0]
    boxes = coco_val.boxes(img.id)
    anns = coco_val.annotations_by_image()[img.id]
    assert len(boxes) == len(anns) > 0
    assert boxes.image_wh == (img.width, img.height)
    xyxy = boxes.xyxy()
    assert xyxy[0].tolist() == pytest.approx(list(anns[0].xyxy), abs=1e-3)


def test_to_coco_dict_fills_area_for_boxes_without_one(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 3, "name": "cat"}],
    }
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    ds = read_coco(path).data
    assert ds.annotations[0].area == 12.0 and ds.annotations[0].iscrowd is False
    assert to_coco_dict(ds)["categories"][0] == {"id": 3, "name": "cat", "supercategory": ""}
