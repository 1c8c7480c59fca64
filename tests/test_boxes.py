import pytest
import torch

from regionprompt.boxes import BoxFormat, Boxes, as_box_tensor, convert_boxes, denormalize_boxes, normalize_boxes
from regionprompt.errors import BoxFormatError

XYXY = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 640.0, 480.0]])


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "xyxy"])
def test_round_trip_every_format(fmt):
    there = convert_boxes(XYXY, "xyxy", fmt)
    assert torch.allclose(convert_boxes(there, fmt, "xyxy"), XYXY)


def test_known_values():
    assert convert_boxes(XYXY[:1], "xyxy", "xywh").tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert convert_boxes(XYXY[:1], "xyxy", "cxcywh").tolist() == [[30.0, 50.0, 40.0, 60.0]]


def test_normalisation_uses_width_for_x_and_height_for_y():
    norm = normalize_boxes(XYXY, (640, 480))
    assert norm[1].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.allclose(denormalize_boxes(norm, (640, 480)), XYXY)


def test_boxes_carry_their_format():
    boxes = Boxes(convert_boxes(XYXY, "xyxy", "cxcywh"), "cxcywh", image_wh=(640, 480))
    assert boxes.format is BoxFormat.CXCYWH
    assert torch.allclose(boxes.xyxy(), XYXY)
    normed = boxes.to("xywh", normalized=True)
    assert normed.normalized and torch.allclose(normed.to("xyxy", normalized=False).data, XYXY)
    assert boxes.area().tolist() == [2400.0, 640.0 * 480.0]


def test_clip_outside_and_degenerate():
    boxes = Boxes(torch.tensor([[-5.0, -5.0, 700.0, 100.0], [10.0, 10.0, 10.0, 20.0]]), image_wh=(640, 480))
    assert boxes.outside().tolist() == [True, False]
    assert boxes.degenerate().tolist() == [False, True]
    assert boxes.clip().data[0].tolist() == [0.0, 0.0, 640.0, 100.0]


def test_iou_and_cat():
    a = Boxes(XYXY[:1])
    b = Boxes(convert_boxes(XYXY, "xyxy", "xywh"), "xywh")
    iou = a.iou(b)
    assert iou.shape == (1, 2) and iou[0, 0] == pytest.approx(1.0)
    both = Boxes.cat([a, b])
    assert len(both) == 3 and both.format is BoxFormat.XYXY
    assert torch.allclose(both.data[1:], XYXY)


@pytest.mark.parametrize(
    "bad, message",
    [([[1, 2, 3]], "shape"), ([[0, 0, float("nan"), 1]], "NaN"), ("abc", "cannot read")],
)
def test_bad_boxes_are_clear_errors(bad, message):
    with pytest.raises(BoxFormatError, match=message):
        as_box_tensor(bad)


def test_unknown_format_and_missing_size():
    with pytest.raises(BoxFormatError, match="unknown box format"):
        Boxes(XYXY, "yxyx")
    with pytest.raises(BoxFormatError, match="image_wh"):
        Boxes(XYXY).to("xyxy", normalized=True)


def test_empty_and_single_box():
    assert as_box_tensor([]).shape == (0, 4)
    assert as_box_tensor([1, 2, 3, 4]).shape == (1, 4)
    assert len(Boxes([])) == 0
