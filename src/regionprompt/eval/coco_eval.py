"""COCO box-detection evaluation with open-vocabulary and LVIS-style groupings, on faster-coco-eval.

The matching and the precision/recall accumulation are faster-coco-eval's (numerically the same as
pycocotools' ``COCOeval``). On top of its ``eval["precision"]`` array we compute:

* per-category AP / AP50: mean of that category's precision over IoU thresholds (.50:.95, or .50
  alone) and the 101 recall points; undefined (None) when the category has no non-crowd ground
  truth in the evaluated images, exactly where COCO stores -1;
* group AP (``base``, ``novel``, frequency tiers ``r``/``c``/``f``): the mean of the per-category APs
  of the group's categories that have ground truth. This is what COCO's summary does for "all", and
  what LVIS does for AP_r/AP_c/AP_f.

Why not faster-coco-eval's ``lvis_style=True`` for the tiers: it also switches on LVIS *federated*
matching (detections of a category that is neither annotated in the image nor listed in its
``neg_category_ids`` are discarded), so on exhaustively labelled data it would report a different
AP than COCO, and it fails on any category without a ``frequency``. On data whose images list all
absent categories as ``neg_category_ids`` the two agree (tested).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from regionprompt.errors import EvaluationError
from regionprompt.eval.inputs import FREQUENCIES, SPLITS, GroundTruth, load_ground_truth, load_predictions
from regionprompt.eval.report import CategoryResult, EvalReport, GroupMetrics
from regionprompt.logging_utils import get_logger

_log = get_logger("eval")


def evaluate_detections(
    gt: str | Path | Mapping[str, Any],
    predictions: str | Path | Sequence[Mapping[str, Any]],
    *,
    iou_type: Literal["bbox"] = "bbox",
    max_dets: int = 100,
    skip_invalid: bool = False,
) -> EvalReport:
    """Evaluate COCO-format box predictions against COCO ground truth.

    Args:
        gt: COCO instances JSON (path or dict). Categories may carry ``split`` (base/novel) and
            ``frequency`` (r/c/f); those produce the base/novel and AP_r/AP_c/AP_f groups.
        predictions: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h] absolute
            pixels, "score"}`` (a list, or a path to a JSON list). An empty list gives AP 0.
        iou_type: only ``"bbox"`` (predictions are boxes).
        max_dets: detections kept per image (highest scores), 100 for COCO, 300 for LVIS-like sets.
        skip_invalid: drop (and count) predictions with unknown image/category ids, non-finite or
            negative-size boxes, or non-finite scores, instead of raising :class:`EvaluationError`.

    Every given category and image of ``gt`` is evaluated; predictions on images without
    annotations are false positives, as in COCO.
    """
    if iou_type != "bbox":
        raise EvaluationError(f"iou_type {iou_type!r} is not supported; predictions are boxes, use 'bbox'")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise EvaluationError(f"max_dets must be a positive integer, got {max_dets!r}")
    truth = load_ground_truth(gt)
    preds = load_predictions(predictions, truth, skip_invalid=skip_invalid)
    precision, recall, cat_ids = _run_cocoeval(truth.dataset, preds.results, max_dets=max_dets)
    return _build_report(truth, preds.results, preds.dropped, precision, recall, cat_ids, max_dets=max_dets)


def _run_cocoeval(
    gt_dataset: dict[str, Any], results: list[dict[str, Any]], *, max_dets: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Run faster-coco-eval; return precision ``(T, R, K, A, M)``, recall ``(T, K, A, M)`` and the K category ids.

    T = 10 IoU thresholds .50:.05:.95, R = 101 recall points, A = area ranges (all, small, medium,
    large), M = max-detection settings (1, 10, ``max_dets``), K = categories sorted by id.
    """
    quiet = logging.getLogger("faster_coco_eval").debug
    coco_gt = COCO(gt_dataset, print_function=quiet)
    # loadRes mutates its input dicts (adds id/area/segmentation): give it copies.
    coco_dt = coco_gt.loadRes([dict(r) for r in results])
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
    evaluator.params.maxDets = sorted({1, 10, max_dets})
    evaluator.evaluate()
    evaluator.accumulate()
    return (
        np.asarray(evaluator.eval["precision"], dtype=np.float64),
        np.asarray(evaluator.eval["recall"], dtype=np.float64),
        [int(c) for c in evaluator.params.catIds],
    )


def _mean_defined(values: np.ndarray) -> float | None:
    """Mean over entries > -1 (COCO's "undefined" marker); None when there are none."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else None


def _group(name: str, per_cat: dict[int, tuple[float | None, float | None]], ids: Iterable[int]) -> GroupMetrics:
    rated = [per_cat[c] for c in ids if per_cat[c][0] is not None]
    if not rated:
        return GroupMetrics(name=name, ap=None, ap50=None, num_categories=0)
    return GroupMetrics(
        name=name,
        ap=float(np.mean([ap for ap, _ in rated])),
        ap50=float(np.mean([ap50 for _, ap50 in rated])),
        num_categories=len(rated),
    )


def _build_report(
    truth: GroundTruth,
    results: list[dict[str, Any]],
    dropped: dict[str, int],
    precision: np.ndarray,
    recall: np.ndarray,
    cat_ids: list[int],
    *,
    max_dets: int,
) -> EvalReport:
    # Indices into the last two axes: area "all" = 0, then small/medium/large; the max_dets setting is last.
    all_area, last_m = 0, -1
    iou50 = 0  # iouThrs[0] == 0.50
    iou75 = 5  # iouThrs[5] == 0.75
    at_max = precision[..., last_m]

    per_cat: dict[int, tuple[float | None, float | None]] = {}
    for k, cid in enumerate(cat_ids):
        per_cat[cid] = (_mean_defined(at_max[:, :, k, all_area]), _mean_defined(at_max[iou50, :, k, all_area]))

    anns = truth.dataset["annotations"]
    num_gt = Counter(a["category_id"] for a in anns if not a["iscrowd"])
    num_pred = Counter(r["category_id"] for r in results)
    names = {c["id"]: c["name"] for c in truth.dataset["categories"]}
    categories = tuple(
        CategoryResult(
            id=cid,
            name=names[cid],
            split=truth.splits.get(cid),
            frequency=truth.frequencies.get(cid),
            num_gt=num_gt.get(cid, 0),
            num_pred=num_pred.get(cid, 0),
            ap=per_cat[cid][0],
            ap50=per_cat[cid][1],
        )
        for cid in cat_ids
    )

    splits = [_group("all", per_cat, cat_ids)]
    if truth.splits:
        splits += [_group(s, per_cat, (c for c in cat_ids if truth.splits.get(c) == s)) for s in SPLITS]
    present_tiers = set(truth.frequencies.values())
    tiers = [
        _group(t, per_cat, (c for c in cat_ids if truth.frequencies.get(c) == t))
        for t in FREQUENCIES
        if t in present_tiers
    ]

    num_images = len(truth.dataset["images"])
    _log.info("evaluated %d predictions on %d images, %d categories", len(results), num_images, len(cat_ids))
    return EvalReport(
        ap=_mean_defined(at_max[:, :, :, all_area]),
        ap50=_mean_defined(at_max[iou50, :, :, all_area]),
        ap75=_mean_defined(at_max[iou75, :, :, all_area]),
        ap_small=_mean_defined(at_max[:, :, :, 1]),
        ap_medium=_mean_defined(at_max[:, :, :, 2]),
        ap_large=_mean_defined(at_max[:, :, :, 3]),
        ar=_mean_defined(recall[:, :, all_area, last_m]),
        splits=tuple(splits),
        tiers=tuple(tiers),
        categories=categories,
        num_images=num_images,
        num_gt=sum(num_gt.values()),
        num_crowd=sum(1 for a in anns if a["iscrowd"]),
        num_predictions=len(results),
        max_dets=max_dets,
        iou_type="bbox",
        dropped=tuple(dropped.items()),
    )
