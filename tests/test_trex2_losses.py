"""T-Rex2 matching and losses: hand-made cases, batched == unbatched, empty targets, zero where they should be."""

import math

import pytest
import torch
import torch.nn.functional as F

from regionprompt.trex2.losses import (
    TRex2Criterion,
    alignment_loss,
    box_losses,
    class_targets,
    focal_loss,
)
from regionprompt.trex2.matcher import HungarianMatcher
from regionprompt.trex2.structures import DetectionTarget, LayerPredictions, TRex2Output

BIG = 12.0  # a confident logit


def _target(boxes, labels):
    return DetectionTarget(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.long))


def test_matcher_hand_made_case():
    # Query 0 sits on object 1, query 2 on object 0; query 1 is far from both.
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2]]])
    logits = torch.full((1, 3, 2), -BIG)
    logits[0, 0, 1] = BIG
    logits[0, 2, 0] = BIG
    target = _target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], [0, 1])
    (rows, cols), = HungarianMatcher()(logits, boxes, [target])
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_matcher_prefers_the_right_class_when_boxes_tie():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[[BIG, -BIG], [-BIG, BIG]]])
    target = _target([[0.5, 0.5, 0.2, 0.2]], [1])
    (rows, cols), = HungarianMatcher()(logits, boxes, [target])
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_matcher_batched_equals_unbatched_and_handles_empty_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 4, generator=g)
    boxes = torch.rand(3, 10, 4, generator=g) * 0.5 + 0.1
    targets = [
        _target(torch.rand(3, 4, generator=g).mul(0.4).add(0.1).tolist(), [0, 3, 1]),
        _target([], []),
        _target(torch.rand(5, 4, generator=g).mul(0.4).add(0.1).tolist(), [2, 2, 0, 1, 3]),
    ]
    matcher = HungarianMatcher()
    batched = matcher(logits, boxes, targets)
    for b, target in enumerate(targets):
        (rows, cols), = matcher(logits[b : b + 1], boxes[b : b + 1], [target])
        assert torch.equal(batched[b][0], rows) and torch.equal(batched[b][1], cols)
    assert len(batched[1][0]) == 0 and len(batched[2][0]) == 5
    empty = matcher(logits[:1], boxes[:1], [_target([], [])])
    assert len(empty[0][0]) == 0


def test_focal_loss_low_when_confident_and_right_high_when_wrong():
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    right = focal_loss(torch.tensor([[BIG, -BIG, -BIG]]), targets, 1.0)
    wrong = focal_loss(torch.tensor([[-BIG, BIG, BIG]]), targets, 1.0)
    assert right < 1e-6 and wrong > 5.0
    masked = focal_loss(torch.tensor([[[-BIG, BIG, BIG]]]), targets[None], 1.0, mask=torch.tensor([[False]]))
    assert masked == 0


def test_box_losses_zero_for_identical_boxes_and_grow_with_error():
    gt = torch.tensor([[0.4, 0.5, 0.2, 0.3], [0.7, 0.2, 0.1, 0.1]])
    l1, giou = box_losses(gt.clone(), gt, 2.0)
    assert l1 == 0 and giou.abs() < 1e-4  # torchvision adds eps=1e-7 to the areas
    l1b, gioub = box_losses(gt + 0.05, gt, 2.0)
    assert l1b > 0 and gioub > 0
    empty = box_losses(torch.zeros(0, 4), torch.zeros(0, 4), 1.0)
    assert empty[0] == 0 and empty[1] == 0


def test_alignment_loss_low_when_aligned_high_when_swapped():
    text = F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    concepts = torch.tensor([10, 11, 12, 13])
    visual_concepts = torch.tensor([12, 10, 12])
    aligned = alignment_loss(text[[2, 0, 2]], visual_concepts, text, concepts, temperature=0.05)
    swapped = alignment_loss(text[[1, 3, 0]], visual_concepts, text, concepts, temperature=0.05)
    assert aligned < 0.05 < math.log(4) < swapped
    assert alignment_loss(torch.zeros(0, 16), torch.zeros(0, dtype=torch.long), text, concepts) == 0
    with pytest.raises(ValueError, match="text embedding"):
        alignment_loss(text[:1], torch.tensor([99]), text, concepts)


def test_class_targets_are_positive_for_every_column_of_the_concept():
    logits = torch.zeros(1, 3, 4)
    column_concepts = torch.tensor([5, 7, 5, 9])  # two columns (e.g. two images' prompts) of concept 5
    target = _target([[0.5, 0.5, 0.1, 0.1]], [2])
    out = class_targets(logits, [(torch.tensor([1]), torch.tensor([0]))], [target], column_concepts)
    assert out[0, 1].tolist() == [1, 0, 1, 0] and out[0, 0].sum() == 0 and out[0, 2].sum() == 0


def _perfect_output(targets, queries=6, columns=3, layers=2):
    logits = torch.full((len(targets), queries, columns), -BIG)
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(len(targets), queries, 1)
    for b, t in enumerate(targets):
        for g in range(len(t)):
            logits[b, g, t.labels[g]] = BIG
            boxes[b, g] = t.boxes[g]
    stage = LayerPredictions(logits, boxes)
    return TRex2Output(tuple([stage] * layers), stage)


def test_criterion_near_zero_on_perfect_predictions_and_finite_on_empty_targets():
    targets = [_target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]], [0, 2]), _target([], [])]
    criterion = TRex2Criterion()
    concepts = torch.tensor([3, 4, 5])
    perfect = criterion(_perfect_output(targets), targets, concepts)
    assert set(perfect) >= {"loss", "cls", "l1", "giou", "cls_0", "cls_enc"}
    assert perfect["loss"] < 1e-4
    noisy = _perfect_output(targets)
    moved = TRex2Output(tuple(LayerPredictions(s.logits.flip(-1), s.boxes.roll(1, dims=1)) for s in noisy.layers),
                        noisy.encoder)
    assert criterion(moved, targets, concepts)["loss"] > 1.0
    none = [_target([], []), _target([], [])]
    empty = criterion(_perfect_output(none), none, concepts)
    assert torch.isfinite(empty["loss"]) and empty["l1"] == 0
