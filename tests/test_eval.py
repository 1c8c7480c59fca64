"""Evaluation: cross-checked against pycocotools on real COCO ground truth (coco_mini val2017)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest

from regionprompt.errors import EvaluationError
from regionprompt.eval import EvalReport, evaluate_detections

# Same algorithm on both sides; differences can only come from float summation order (observed
# ~1e-16), so anything beyond 1e-9 is a real disagreement.
TOL = 1e-9


@pytest.fixture(scope="module")
def gt_path(shared_data: Path) -> Path:
    return shared_data / "coco_mini" / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def gt(gt_path: Path) -> dict:
    return json.loads(gt_path.read_text())


@pytest.fixture(scope="module")
def ovd_split(shared_data: Path) -> dict[int, str]:
    meta = json.loads((shared_data / "metadata" / "coco_ovd_split_48_17.json").read_text())
    return {c["coco_id"]: "base" for c in meta["base_48"]} | {c["coco_id"]: "novel" for c in meta["novel_17"]}


def perturbed_predictions(gt: dict, seed: int, *, jitter: float = 3.0, drop: float = 0.15, n_fp: int = 200) -> list:
    """Predictions from the GT boxes: jittered by ~``jitter`` px, random scores, some dropped, plus false positives.

    Crowd boxes are kept as predictions too, so the crowd-ignore rule is exercised.
    """
    rng = np.random.default_rng(seed)
    preds = []
    for ann in gt["annotations"]:
        if rng.random() < drop:
            continue
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0.0, jitter, 4)
        box = [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)]
        preds.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                      "score": float(rng.random())})
    image_ids = [img["id"] for img in gt["images"]]
    cat_ids = [c["id"] for c in gt["categories"]]
    for _ in range(n_fp):
        x, y = rng.uniform(0, 400, 2)
        w, h = rng.uniform(4, 200, 2)
        preds.append({"image_id": int(rng.choice(image_ids)), "category_id": int(rng.choice(cat_ids)),
                      "bbox": [x, y, w, h], "score": float(rng.random())})
    return preds


def pycocotools_eval(gt: dict, preds: list, *, cat_ids: list[int] | None = None, max_dets: int = 100):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = sorted(cat_ids)
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        if max_dets == 100:
            evaluator.summarize()
    return evaluator


def mean_defined(a: np.ndarray) -> float:
    return float(a[a > -1].mean())


@pytest.mark.parametrize(("seed", "jitter"), [(0, 3.0), (1, 6.0), (2, 1.5)])
def test_matches_pycocotools_on_perturbed_predictions(gt: dict, gt_path: Path, seed: int, jitter: float) -> None:
    preds = perturbed_predictions(gt, seed, jitter=jitter)
    report = evaluate_detections(gt_path, preds)
    ref = pycocotools_eval(gt, preds)

    ours = [report.ap, report.ap50, report.ap75, report.ap_small, report.ap_medium, report.ap_large, report.ar]
    theirs = [*ref.stats[:6], ref.stats[8]]  # stats[8] = AR@100
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < TOL
    assert 0.2 < report.ap < 0.9  # a real, non-degenerate operating point

    precision = ref.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area=all, maxDets=100
    assert [c.id for c in report.categories] == list(ref.params.catIds)
    for k, row in enumerate(report.categories):
        if row.num_gt == 0:
            assert row.ap is None and row.ap50 is None
            assert (precision[:, :, k] == -1).all()
        else:
            assert abs(row.ap - mean_defined(precision[:, :, k])) < TOL
            assert abs(row.ap50 - mean_defined(precision[0, :, k])) < TOL
    assert report.split("all").ap == pytest.approx(report.ap, abs=TOL)
    assert report.num_predictions == len(preds)


def test_max_dets_300_matches_pycocotools(gt: dict) -> None:
    # >100 false positives scored above the true boxes on some images: max_dets decides what is kept.
    rng = np.random.default_rng(5)
    preds = perturbed_predictions(gt, 3, n_fp=0)
    for img in gt["images"][:10]:
        for _ in range(150):
            preds.append({"image_id": img["id"], "category_id": 1, "bbox": list(rng.uniform(0, 50, 4) + [0, 0, 5, 5]),
                          "score": 1.5})
    r100 = evaluate_detections(gt, preds, max_dets=100)
    r300 = evaluate_detections(gt, preds, max_dets=300)
    ref = pycocotools_eval(gt, preds, max_dets=300)
    assert r300.max_dets == 300
    assert abs(r300.ap - mean_defined(ref.eval["precision"][:, :, :, 0, -1])) < TOL
    assert abs(r300.ar - mean_defined(ref.eval["recall"][:, :, 0, -1])) < TOL
    # Person boxes ranked below the 150 high-score false positives only count with max_dets=300.
    assert r300.ar > r100.ar
    assert r300.category("person").ap != pytest.approx(r100.category("person").ap, abs=1e-6)


def gt_as_predictions(gt: dict, *, dx: float = 0.0) -> list:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
         "bbox": [a["bbox"][0] + dx, *a["bbox"][1:]]}
        for a in gt["annotations"]
        if not a["iscrowd"]  # a crowd region as a prediction would be an unmatched false positive
    ]


def test_ground_truth_as_predictions_is_perfect(gt: dict, ovd_split: dict[int, str]) -> None:
    gt = copy.deepcopy(gt)
    for cat in gt["categories"]:
        if cat["id"] in ovd_split:
            cat["split"] = ovd_split[cat["id"]]
    report = evaluate_detections(gt, gt_as_predictions(gt))
    for value in (report.ap, report.ap50, report.ap75, report.ar,
                  report.split("base").ap, report.split("novel").ap50):
        assert value == pytest.approx(1.0, abs=1e-12)
    assert all(c.ap == pytest.approx(1.0) for c in report.categories if c.num_gt)


def test_ap_falls_as_predictions_shift(gt: dict) -> None:
    aps = [evaluate_detections(gt, gt_as_predictions(gt, dx=dx)).ap for dx in (0, 1, 2, 4, 8, 16, 32, 64)]
    assert aps[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(aps, aps[1:])), aps
    assert aps[-1] < 0.2


def test_base_novel_equal_pycocotools_restricted_to_the_split(gt: dict, ovd_split: dict[int, str]) -> None:
    gt = copy.deepcopy(gt)
    for cat in gt["categories"]:
        if cat["id"] in ovd_split:
            cat["split"] = ovd_split[cat["id"]]
    preds = perturbed_predictions(gt, 11)
    report = evaluate_detections(gt, preds)
    with_gt = {a["category_id"] for a in gt["annotations"] if not a["iscrowd"]}
    for split in ("base", "novel"):
        ids = [c for c, s in ovd_split.items() if s == split]
        ref = pycocotools_eval(gt, preds, cat_ids=ids)
        group = report.split(split)
        assert abs(group.ap - ref.stats[0]) < TOL
        assert abs(group.ap50 - ref.stats[1]) < TOL
        assert group.num_categories == len(with_gt & set(ids))
        rows = [c for c in report.categories if c.split == split and c.ap is not None]
        assert abs(group.ap50 - np.mean([c.ap50 for c in rows])) < TOL
    # coco_mini's 15 "unused" categories count only in "all".
    assert report.split("all").num_categories == len(with_gt)
    assert report.split("base").num_categories + report.split("novel").num_categories < len(with_gt)
    assert report.tiers == () and report.ap_r is None
    assert "| novel |" in report.to_markdown()


def artificial_tiers(gt: dict) -> dict:
    """LVIS-like tiers from how many images a category appears in: f >= 5, c >= 2, r otherwise."""
    gt = copy.deepcopy(gt)
    images: dict[int, set] = {}
    for ann in gt["annotations"]:
        images.setdefault(ann["category_id"], set()).add(ann["image_id"])
    for cat in gt["categories"]:
        n = len(images.get(cat["id"], ()))
        cat["frequency"] = "f" if n >= 5 else "c" if n >= 2 else "r"
    return gt


def test_frequency_tiers_equal_pycocotools_and_faster_coco_eval_lvis_style(gt: dict) -> None:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = artificial_tiers(gt)
    preds = perturbed_predictions(gt, 21)
    report = evaluate_detections(gt, preds)
    assert {t.name for t in report.tiers} == {"r", "c", "f"}
    for tier in ("r", "c", "f"):
        ids = [c["id"] for c in gt["categories"] if c["frequency"] == tier]
        ref = pycocotools_eval(gt, preds, cat_ids=ids)
        assert abs(report.tier(tier).ap - ref.stats[0]) < TOL
        assert abs(report.tier(tier).ap50 - ref.stats[1]) < TOL

    # LVIS federated protocol == COCO's when every image lists all its absent categories as negatives.
    lvis_gt = copy.deepcopy(gt)
    present: dict[int, set] = {}
    for ann in lvis_gt["annotations"]:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    all_ids = [c["id"] for c in lvis_gt["categories"]]
    for img in lvis_gt["images"]:
        img["neg_category_ids"] = [c for c in all_ids if c not in present.get(img["id"], set())]
        img["not_exhaustive_category_ids"] = []
    coco_gt = COCO(lvis_gt)
    lvis = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(preds)), "bbox", lvis_style=True)
    lvis.run()
    stats = lvis.stats_as_dict
    assert abs(report.ap_r - stats["APr"]) < TOL
    assert abs(report.ap_c - stats["APc"]) < TOL
    assert abs(report.ap_f - stats["APf"]) < TOL
    assert abs(report.ap - stats["AP_all"]) < TOL

    # Without negatives, federated matching discards false positives of absent categories: higher AP.
    # This is why tiers are computed from COCO matching rather than with lvis_style=True.
    for img in lvis_gt["images"]:
        img["neg_category_ids"] = []
    coco_gt = COCO(lvis_gt)
    federated = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(preds)), "bbox", lvis_style=True)
    federated.run()
    assert federated.stats_as_dict["AP_all"] > report.ap + 0.01


def test_empty_predictions_give_zero_ap(gt_path: Path) -> None:
    report = evaluate_detections(gt_path, [])
    assert report.ap == 0.0 and report.ap50 == 0.0 and report.ar == 0.0
    assert report.num_predictions == 0
    assert all(c.ap == 0.0 for c in report.categories if c.num_gt)


def test_inputs_are_not_mutated(gt: dict) -> None:
    gt_copy, preds = copy.deepcopy(gt), perturbed_predictions(gt, 4)
    preds_copy = copy.deepcopy(preds)
    evaluate_detections(gt_copy, preds)
    assert gt_copy == gt and preds == preds_copy


def test_report_json_is_deterministic_and_round_trips(gt: dict, tmp_path: Path) -> None:
    preds = perturbed_predictions(artificial_tiers(gt), 8)
    first = evaluate_detections(artificial_tiers(gt), preds)
    second = evaluate_detections(artificial_tiers(gt), preds)
    first.to_json(tmp_path / "a.json")
    second.to_json(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert first.to_markdown() == second.to_markdown()
    loaded = EvalReport.from_json(tmp_path / "a.json")
    assert loaded == first
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["ap_r"] == first.ap_r and len(data["categories"]) == 80


# ----------------------------------------------------------------------------- bad inputs
def test_unknown_ids_raise_with_counts_or_are_skipped(gt: dict) -> None:
    preds = perturbed_predictions(gt, 6)
    bad = preds + [
        {"image_id": 999999999, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 999999998, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": gt["images"][0]["id"], "category_id": 12, "bbox": [0, 0, 10, 10], "score": 0.9},
    ]
    with pytest.raises(EvaluationError, match=r"3 of \d+ predictions.*1 with unknown category_id.*2 with unknown "
                                              r"image_id.*skip_invalid"):
        evaluate_detections(gt, bad)
    skipped = evaluate_detections(gt, bad, skip_invalid=True)
    assert dict(skipped.dropped) == {"unknown category_id": 1, "unknown image_id": 2}
    assert skipped.ap == pytest.approx(evaluate_detections(gt, preds).ap, abs=1e-12)
    assert "Dropped invalid predictions" in skipped.to_markdown()


@pytest.mark.parametrize(
    ("bbox", "score", "reason"),
    [
        ([float("nan"), 0, 10, 10], 0.5, "NaN/inf"),
        ([0, 0, -3, 10], 0.5, "negative width/height"),
        ([0, 0, 10], 0.5, "4 numbers"),
        ([0, 0, 10, 10], float("nan"), "score is not a finite number"),
    ],
)
def test_bad_boxes_and_scores(gt: dict, bbox: list, score: float, reason: str) -> None:
    pred = {"image_id": gt["images"][0]["id"], "category_id": 1, "bbox": bbox, "score": score}
    with pytest.raises(EvaluationError, match=reason):
        evaluate_detections(gt, [pred])
    assert evaluate_detections(gt, [pred], skip_invalid=True).ap == 0.0


def test_malformed_files(tmp_path: Path, gt_path: Path, gt: dict) -> None:
    broken = tmp_path / "pred.json"
    broken.write_text('[{"image_id": 1,')
    with pytest.raises(EvaluationError, match=r"pred\.json is not valid JSON \(line 1"):
        evaluate_detections(gt_path, broken)
    with pytest.raises(EvaluationError, match="not found"):
        evaluate_detections(tmp_path / "missing.json", [])
    (tmp_path / "obj.json").write_text('{"foo": 1}')
    with pytest.raises(EvaluationError, match="expected a JSON list"):
        evaluate_detections(gt_path, tmp_path / "obj.json")
    with pytest.raises(EvaluationError, match="missing or non-list 'images'"):
        evaluate_detections(tmp_path / "obj.json", [])
    with pytest.raises(EvaluationError, match="lacks image_id, category_id, bbox or score"):
        evaluate_detections(gt_path, [{"image_id": 1, "bbox": [0, 0, 1, 1]}])


def test_ground_truth_problems(gt: dict) -> None:
    with pytest.raises(EvaluationError, match="no annotations"):
        evaluate_detections({**gt, "annotations": []}, [])
    with pytest.raises(EvaluationError, match="no images"):
        evaluate_detections({**gt, "images": [], "annotations": []}, [])
    bad_ann = {**gt["annotations"][0], "category_id": 12345}
    with pytest.raises(EvaluationError, match=r"annotations\[0\]: category_id 12345"):
        evaluate_detections({**gt, "annotations": [bad_ann]}, [])
    bad_split = copy.deepcopy(gt)
    bad_split["categories"][0]["split"] = "seen"
    with pytest.raises(EvaluationError, match="'person'.*split must be 'base' or 'novel'"):
        evaluate_detections(bad_split, [])
    with pytest.raises(EvaluationError, match="max_dets"):
        evaluate_detections(gt, [], max_dets=0)
    with pytest.raises(EvaluationError, match="iou_type"):
        evaluate_detections(gt, [], iou_type="segm")  # type: ignore[arg-type]


def test_annotation_id_zero_and_missing_area_are_handled(gt: dict) -> None:
    # The evaluator uses annotation id 0 as "unmatched"; boxes-only datasets omit 'area' and 'iscrowd'.
    plain = copy.deepcopy(gt)
    plain["annotations"] = [
        {"id": i, "image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"]}
        for i, a in enumerate(gt["annotations"])
        if not a["iscrowd"]
    ]
    report = evaluate_detections(plain, gt_as_predictions(gt))
    assert report.ap == pytest.approx(1.0)
    assert report.ap_small is not None and report.num_crowd == 0


def test_numpy_scalars_are_accepted(gt: dict) -> None:
    preds = perturbed_predictions(gt, 9)
    as_numpy = [
        {"image_id": np.int64(p["image_id"]), "category_id": np.int32(p["category_id"]),
         "bbox": np.asarray(p["bbox"], dtype=np.float64), "score": np.float32(p["score"])}
        for p in preds
    ]
    plain = [{**p, "score": float(np.float32(p["score"]))} for p in preds]
    assert evaluate_detections(gt, as_numpy) == evaluate_detections(gt, plain)
    with pytest.raises(EvaluationError, match="id must be an integer, got 2.5"):
        evaluate_detections(gt, [{**preds[0], "image_id": 2.5}])


def test_a_labelled_dataset_is_matched_by_file_and_category_name():
    """`regionprompt label --format coco` writes its own ids: eval must match by names, never trust the ids."""
    gt = {"images": [{"id": 7, "file_name": "imgs/a.png", "width": 100, "height": 100},
                     {"id": 9, "file_name": "imgs/b.png", "width": 100, "height": 100}],
          "categories": [{"id": 3, "name": "dog"}, {"id": 5, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
                          {"id": 2, "image_id": 9, "category_id": 5, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0}]}
    labelled = {"images": [{"id": 1, "file_name": "b.png"}, {"id": 2, "file_name": "a.png"}],
                "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                "annotations": [{"id": 1, "image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 30], "score": 0.9},
                                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.8}]}
    assert evaluate_detections(gt, labelled).ap50 == pytest.approx(1.0)
    as_results = [{"image_id": 7, "category_id": 3, "bbox": [10, 10, 30, 30], "score": 0.9},
                  {"image_id": 9, "category_id": 5, "bbox": [50, 50, 20, 20], "score": 0.8}]
    assert evaluate_detections(gt, as_results).ap50 == pytest.approx(1.0)
    wrong = copy.deepcopy(labelled)
    wrong["categories"][0]["name"] = "horse"
    with pytest.raises(EvaluationError, match="'horse' is not in the ground truth"):
        evaluate_detections(gt, wrong)
    del labelled["annotations"][0]["score"]
    with pytest.raises(EvaluationError, match="no score"):
        evaluate_detections(gt, labelled)
