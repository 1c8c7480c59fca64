import json

import numpy as np
import pytest
import torch
from PIL import Image

from regionprompt.errors import RegionPromptError
from regionprompt.images import load_image
from regionprompt.prompts import TextPrompt, group_prompts
from regionprompt.results import Detections


@pytest.fixture(scope="module")
def two_cats(shared_data):
    """The real 'two cats' photo with its COCO ground truth turned into detections."""
    folder = shared_data / "hf_two_cats"
    image = load_image(folder / "000000039769.png")
    anns = [a for a in json.loads((folder / "coco_annotations.txt").read_text()) if a["category_id"] in (17, 75)]
    anns.sort(key=lambda a: (a["category_id"], -a["area"]))  # cats first, biggest first
    xywh = torch.tensor([a["bbox"] for a in anns])
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    names = ("cat", "remote")
    prompts = tuple(group_prompts([TextPrompt("cat"), TextPrompt("remote")]))
    dets = Detections(xyxy, [0.9, 0.8, 0.6, 0.3], [0, 0, 1, 1], names, image.wh, prompts, image.name)
    return image, dets


def test_filter_index_and_names(two_cats):
    _, dets = two_cats
    assert len(dets) == 4
    strong = dets.filter(0.5)
    assert len(strong) == 3 and strong.label_names == ["cat", "cat", "remote"]
    assert dets[dets.labels == 1].scores.tolist() == pytest.approx([0.6, 0.3])
    assert len(dets[0]) == 1 and len(dets[-1]) == 1 and dets[-1].scores.item() == pytest.approx(0.3)
    assert dets.topk(2).scores.tolist() == pytest.approx([0.9, 0.8])


def test_per_class_nms_keeps_overlapping_boxes_of_other_classes(two_cats):
    _, dets = two_cats
    shifted = dets.boxes[:1] + 3.0
    dup = Detections(
        torch.cat([dets.boxes, shifted, shifted]),
        torch.cat([dets.scores, torch.tensor([0.5, 0.4])]),
        torch.cat([dets.labels, torch.tensor([0, 1])]),
        dets.names,
        dets.image_wh,
    )
    kept = dup.nms(0.5)
    assert len(kept) == 5  # the shifted 'cat' duplicate goes; the shifted box labelled 'remote' stays
    assert kept.scores.tolist() == sorted(kept.scores.tolist(), reverse=True)
    assert len(dup.nms(0.5, per_class=False)) == 4


def test_to_coco_round_trips_boxes(two_cats):
    _, dets = two_cats
    results = dets.to_coco(39769, {"cat": 17, "remote": 75})
    assert [r["category_id"] for r in results] == [17, 17, 75, 75]
    assert results[0]["bbox"] == pytest.approx([347.5, 25.63, 292.5, 343.75], abs=0.01)
    assert dets.to_coco(1, [5, 6])[2]["category_id"] == 6
    with pytest.raises(RegionPromptError, match="no COCO category id"):
        dets.to_coco(1, {"cat": 17})


def test_json_and_plot(two_cats):
    image, dets = two_cats
    payload = json.loads(dets.to_json())
    assert payload["width"] == 640 and payload["prompts"][0]["texts"] == ["cat"]
    assert [d["name"] for d in payload["detections"]] == ["cat", "cat", "remote", "remote"]
    drawn = dets.plot(image.image)
    assert drawn.size == image.wh
    before, after = np.asarray(image.image), np.asarray(drawn)
    assert (before != after).any(axis=2).sum() > 1000  # boxes and captions were drawn
    assert np.array_equal(before, np.asarray(image.image))  # the input image is untouched


def test_empty_and_invalid_detections():
    empty = Detections.empty(["dog"], (10, 10))
    assert len(empty) == 0 and len(empty.nms()) == 0 and empty.to_coco(1) == []
    with pytest.raises(RegionPromptError, match="as many boxes"):
        Detections(torch.zeros(2, 4), [0.1], [0], ("a",), (5, 5))
    with pytest.raises(RegionPromptError, match="index the 1 names"):
        Detections(torch.zeros(1, 4), [0.1], [3], ("a",), (5, 5))


def test_save_and_crops(two_cats, tmp_path):
    image, dets = two_cats
    path = dets.save(tmp_path / "out" / "cats.jpg", image.image)
    saved = Image.open(path)
    assert saved.format == "JPEG" and saved.size == image.wh
    assert np.abs(np.asarray(saved, dtype=np.int16) - np.asarray(image.image.convert("RGB"), dtype=np.int16)).max() > 100
    with pytest.raises(RegionPromptError, match="writes an image"):
        dets.save(tmp_path / "cats.json", image.image)
    crops = dets.crops(image.image)
    assert [name for name, _, _ in crops] == [dets.names[int(dets.labels[i])] for i in dets.scores.argsort(descending=True, stable=True)]
    best = int(dets.scores.argmax())
    x1, y1, x2, y2 = dets.boxes[best].tolist()
    name, score, crop = crops[0]
    assert score == float(dets.scores[best]) and abs(crop.width - (x2 - x1)) <= 2 and abs(crop.height - (y2 - y1)) <= 2
    with pytest.raises(RegionPromptError, match="needs the image"):
        Detections.empty(["cat"], (10, 10)).crops()


def test_show_opens_the_drawing_in_the_image_viewer(two_cats, monkeypatch):
    image, dets = two_cats
    shown = []
    monkeypatch.setattr(Image.Image, "show", lambda self, title=None: shown.append((self.copy(), title)))
    returned = dets.show(image.image)
    [(drawn, title)] = shown
    assert title == dets.image_name and drawn.size == image.wh
    assert np.array_equal(np.asarray(drawn), np.asarray(returned))
    assert np.array_equal(np.asarray(drawn), np.asarray(dets.plot(image.image)))  # the boxes drawn, not the bare photo
    assert (np.asarray(drawn) != np.asarray(image.image.convert("RGB"))).any(axis=2).sum() > 1000
    with pytest.raises(RegionPromptError, match="needs the image"):
        Detections.empty(["cat"], (10, 10)).show()
