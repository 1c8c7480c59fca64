"""Caption data: COCO captions JSON and JSON lines, on the real COCO captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regionprompt.data.captions import CaptionDataset, CaptionedImage, read_captions, write_captions_jsonl, write_coco_captions
from regionprompt.data.validate import ProblemKind
from regionprompt.errors import DatasetError


def test_read_coco_mini_captions(shared_data: Path) -> None:
    data = read_captions(shared_data / "coco_mini/annotations/captions_val2017.json").data
    assert len(data.images) == 79 and data.num_captions == 395  # README manifest
    by_name = data.by_file_name()
    assert by_name["000000397133.jpg"][0] == "A man is in a kitchen making pizzas."
    assert all(len(c) >= 5 for c in by_name.values())


def test_read_full_val2017_captions_and_roundtrip_jsonl(shared_data: Path, tmp_path: Path) -> None:
    data = read_captions(shared_data / "coco_captions_val2017/captions_val2017.json").data
    assert len(data.images) == 5000 and data.num_captions == 25014
    assert sum(1 for _ in data.pairs()) == 25014
    jsonl = write_captions_jsonl(data, tmp_path / "c.jsonl")
    assert len(jsonl.read_text().splitlines()) == 5000
    assert read_captions(jsonl).data.images == data.images
    coco = write_coco_captions(data, tmp_path / "c.json")
    again = read_captions(coco).data
    assert again.images == data.images and again.extra["info"] == data.extra["info"]


def test_jsonl_accepts_both_shapes_and_merges_lines(tmp_path: Path) -> None:
    path = tmp_path / "caps.jsonl"
    path.write_text(
        '{"image": "a.jpg", "caption": "  a dog on grass "}\n'
        "\n"
        '{"file_name": "b.jpg", "captions": ["two cats", "cats on a sofa"], "width": 64, "height": 32}\n'
        '{"image": "a.jpg", "caption": "a brown dog"}\n'
    )
    data = read_captions(path).data
    assert data.by_file_name() == {"a.jpg": ("a dog on grass", "a brown dog"), "b.jpg": ("two cats", "cats on a sofa")}
    assert (data.images[1].width, data.images[1].height) == (64, 32)
    coco = json.loads(write_coco_captions(data, tmp_path / "c.json").read_text())
    assert [img["id"] for img in coco["images"]] == [1, 2] and len(coco["annotations"]) == 4


def test_jsonl_bad_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"image": "a.jpg", "caption": "fine"}\n'
        '{"image": "b.jpg", "caption": "unterminated}\n'
        '{"caption": "no image"}\n'
        '{"image": "c.jpg", "caption": "   "}\n'
        '{"image": "d.jpg", "captions": "not a list"}\n'
        "[1, 2]\n"
    )
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2:\d+: invalid JSON"):
        read_captions(path)
    result = read_captions(path, skip_invalid=True)
    assert result.report.counts == {
        ProblemKind.MALFORMED_FILE: 1,
        ProblemKind.MISSING_FIELD: 1,
        ProblemKind.EMPTY_CAPTION: 1,
        ProblemKind.WRONG_TYPE: 2,
    }
    assert result.report.dropped == {"lines": 4, "captions": 1}
    assert result.data.by_file_name() == {"a.jpg": ("fine",), "c.jpg": ()}


def test_coco_captions_unknown_image(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 2, "caption": "x"}]}))
    with pytest.raises(DatasetError, match="caption 5: refers to image id 2"):
        read_captions(path)
    assert read_captions(path, skip_invalid=True).report.dropped == {"captions": 1}


def test_in_memory_structure() -> None:
    data = CaptionDataset([CaptionedImage("x.jpg", ["a", "b"])])
    assert list(data.pairs()) == [("x.jpg", "a"), ("x.jpg", "b")] and data.num_captions == 2
