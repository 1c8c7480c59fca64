"""The post-processing both engines share: negatives veto pairs, the threshold and per-category NMS keep
the best detections."""

import torch

from regionprompt.detect.postprocess import select_detections, suppressed_by_negatives


def test_a_negative_vetoes_only_the_regions_it_fits_better():
    own = torch.tensor([[0.9, 0.2], [0.4, 0.8]])  # (K=2 regions, C=2 categories)
    negatives = [torch.tensor([[0.5], [0.6]]), torch.zeros(2, 0)]  # category 0 has one negative; 1 has none
    suppressed = suppressed_by_negatives(own, negatives)
    assert suppressed.tolist() == [[False, False], [True, False]]  # region 1 fits the negative (0.6 > 0.4)


def test_select_keeps_pairs_above_threshold_not_vetoed_after_nms_best_first():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.7], [0.1, 0.6]])
    rows, cols = select_detections(boxes, scores, 0.5, nms_iou=0.5, max_detections=10)
    # (1, 0) overlaps the better (0, 0) of its category; (2, 0) is below the threshold
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1), (2, 1)]
    veto = torch.zeros(3, 2, dtype=torch.bool)
    veto[0, 0] = True  # without (0, 0), (1, 0) survives NMS
    rows, cols = select_detections(boxes, scores, 0.5, nms_iou=0.5, max_detections=2, suppressed=veto)
    assert list(zip(rows.tolist(), cols.tolist())) == [(1, 0), (1, 1)]
