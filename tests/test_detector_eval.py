"""Detector evaluation harness (``regionprompt eval-detector``): every protocol end to end on rendered
EmojiWorld test scenes with a real (tiny, random) detector folder, plus an oracle region encoder whose
scores are perfect, so that the AP it must give is known."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from detector_fixtures import build_detector_folder
from torchvision.ops import box_iou

from regionprompt.api import Detector
from regionprompt.cli import main
from regionprompt.concept import PromptConcept
from regionprompt.detect.regionclip.zeroshot import ALL_BACKGROUND_MODES
from regionprompt.errors import EvaluationError
from regionprompt.eval.detector_eval import (
    DetectorEvalConfig,
    configure,
    evaluate_detector,
    generic_concepts,
)
from regionprompt.eval.detector_eval_config import BACKGROUNDS
from regionprompt.eval.eval_set import (
    EvalImage,
    ResultLog,
    load_eval_set,
    pick_exemplars,
)
from regionprompt.eval.lookalike import count_hits, most_similar_pairs
from regionprompt.images import load_image
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder
from regionprompt.world.build import build_world
from regionprompt.world.scene import SceneConfig

EXTRA_CATEGORIES = 16  # absent categories kept in the vocabulary: they compete and have no exemplars


def _small_vocabulary(path, out, *, drop_boxes_of=None):
    """The build's ground truth with its present categories plus a few absent ones (a short vocabulary
    keeps the test fast); ``drop_boxes_of``: remove that category's boxes (an exemplar set lacking it)."""
    data = json.loads(path.read_text())
    present = sorted({a["category_id"] for a in data["annotations"]})
    absent = [c["id"] for c in data["categories"] if c["id"] not in present][:EXTRA_CATEGORIES]
    keep = set(present) | set(absent)
    data["categories"] = [c for c in data["categories"] if c["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != drop_boxes_of]
    out.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four test scenes (google artwork) and, as the separate exemplar build, the same scenes' layouts in
    the other artwork style (so that every test category has exemplars) minus one category."""
    root = tmp_path_factory.mktemp("world")
    config = {"size": 128, "min_objects": 2, "max_objects": 5}
    build_world(root / "test", split="test", num_images=4, seed=1, config=SceneConfig(style="google", **config))
    build_world(root / "exemplars", split="test", num_images=6, seed=1, config=SceneConfig(style="twitter", **config))
    gt = _small_vocabulary(root / "test" / "annotations.json", root / "test" / "small.json")
    first = json.loads(gt.read_text())["annotations"][0]["category_id"]
    exemplars = _small_vocabulary(root / "exemplars" / "annotations.json", root / "exemplars" / "small.json",
                                  drop_boxes_of=first)
    return {"gt": gt, "exemplars": exemplars, "dropped": first}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)  # the machine's two cores are shared
    return build_detector_folder(tmp_path_factory.mktemp("detector"))


@pytest.fixture(scope="module")
def detector(folder, tmp_path_factory):
    return Detector.load(folder, cache=EmbeddingCache(tmp_path_factory.mktemp("cache") / "embeddings.sqlite"))


def _gt_boxes(data):
    """{(image_id, category_id, rounded xywh)} of the ground truth."""
    return {(a["image_id"], a["category_id"], tuple(round(v, 1) for v in a["bbox"])) for a in data.gt["annotations"]}


def test_backgrounds_match_the_detector():
    assert set(BACKGROUNDS) == set(ALL_BACKGROUND_MODES)
    config = DetectorEvalConfig(mode="text")
    assert config.background_for("learned") == "learned" and config.background_for("auto") == "none"
    assert DetectorEvalConfig(mode="text", background="auto").background_for("learned") == "auto"


def test_text_mode_gt_boxes_embeds_the_vocabulary_once(detector, world, monkeypatch):
    calls = []
    original = PromptEmbedder.embed

    def counting(self, phrases):
        calls.append(len(phrases))
        return original(self, phrases)

    monkeypatch.setattr(PromptEmbedder, "embed", counting)
    data = load_eval_set(world["gt"])
    result = evaluate_detector(detector, world["gt"], DetectorEvalConfig(mode="text", proposals="gt", batch_size=2))
    # One embedding call for the whole vocabulary, none per image (background "none" needs no phrase).
    assert calls == [len(data.names)]
    assert result.settings["background"] == "none" and result.counts == {"images": 4, "vocabulary": len(data.names)}
    report = result.report
    assert report.num_images == 4 and report.split("base") and report.split("novel") and report.ap_r is not None
    assert 0 <= report.ap50 <= 1 and set(result.summary()) >= {"AP", "AP50", "AP50_base", "AP50_novel", "AP_r", "AP_c", "AP_f"}
    # Classifying the ground-truth boxes: every prediction sits on a ground-truth box, top 100 per image.
    boxes = {(i, b) for i, _, b in _gt_boxes(data)}
    assert result.predictions and all((p["image_id"], tuple(round(v, 1) for v in p["bbox"])) in boxes for p in result.predictions)
    per_image = {}
    for p in result.predictions:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert set(per_image) == {im.id for im in data.images} and max(per_image.values()) <= 100
    # Every (box, category) pair scores, so with G boxes and C categories an image has min(100, G*C) detections.
    for image in data.images:
        assert per_image[image.id] == min(100, len(image.boxes) * len(data.names))
    assert "| novel |" in result.to_markdown() and "AP_r" in result.to_markdown()


def test_text_mode_with_the_rpn(detector, world):
    result = evaluate_detector(detector, world["gt"], DetectorEvalConfig(mode="text", proposals="rpn", max_images=2,
                                                                         max_detections=20))
    assert result.report.num_images == 2 and result.settings["max_proposals"] == 30
    per_image = {}
    for p in result.predictions:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert max(per_image.values()) <= 20 and set(per_image) <= {1, 2}


class OracleRegions:
    """Stands in for the detector's region encoder: a ground-truth box's embedding is ``vectors[category]``
    (any other box: zeros). Images are told apart by their pixels."""

    def __init__(self, data, vectors):
        self.input_size = 128
        self.table = {}
        for image in data.images:
            key = hashlib.sha256(load_image(image.path).image.tobytes()).hexdigest()
            rows = torch.stack([vectors[c] for c in image.category_ids])
            self.table[key] = (len(self.table), image.boxes, rows)
        self.by_index = {index: (boxes, rows) for index, boxes, rows in self.table.values()}

    def pixels(self, images):
        return torch.tensor([self.table[hashlib.sha256(im.tobytes()).hexdigest()][0] for im in images])

    def feature_maps(self, pixels):
        return pixels  # one image index per image stands in for its feature map

    def pool(self, feature_map, boxes, image_wh):
        gt_boxes, rows = self.by_index[int(feature_map)]
        best, index = box_iou(boxes.float(), gt_boxes).max(dim=1)
        return rows[index] * (best > 0.99).float()[:, None]


def _oracle(detector, data, swap_novel):
    """Orthonormal concepts (one basis vector per category) and an oracle encoder that embeds each box as
    its category's vector -- or, with ``swap_novel``, the NEXT present novel category's vector."""
    tuned = configure(detector, background="none", max_detections=100)
    ids = data.category_ids
    basis = torch.eye(tuned.engine.embedder.embed_dim)
    vector = {c: basis[k] for k, c in enumerate(ids)}
    concepts = [PromptConcept(data.names[c], vector[c], tuned.model_hash, sources=({"kind": "text", "text": data.names[c]},))
                for c in ids]
    region_vector = dict(vector)
    if swap_novel:
        novel = [c for c in data.present_category_ids() if data.splits.get(c) == "novel"]
        assert len(novel) >= 2
        for c, other in zip(novel, novel[1:] + novel[:1]):
            region_vector[c] = vector[other]
    tuned.engine.regions = OracleRegions(data, region_vector)
    return tuned, concepts


def test_perfect_scores_give_ap_1_and_wrong_novel_scores_only_hurt_novel(detector, world):
    data = load_eval_set(world["gt"])
    for image in data.images:  # precondition: per-class NMS keeps every ground-truth box
        for c in set(image.category_ids):
            boxes = image.boxes_of(c)
            iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
            assert len(boxes) < 2 or iou.max() < 0.5
    config = DetectorEvalConfig(mode="text", proposals="gt")
    oracle, concepts = _oracle(detector, data, swap_novel=False)
    perfect = evaluate_detector(oracle, world["gt"], config, concepts=concepts)
    for name in ("all", "base", "novel"):
        group = perfect.report.split(name)
        assert group.ap == pytest.approx(1.0) and group.ap50 == pytest.approx(1.0) and group.num_categories > 0
    assert perfect.report.ap_r == pytest.approx(1.0)

    oracle, concepts = _oracle(detector, data, swap_novel=True)
    swapped = evaluate_detector(oracle, world["gt"], config, concepts=concepts)
    base, novel, everything = (swapped.report.split(n) for n in ("base", "novel", "all"))
    assert base.ap50 == pytest.approx(1.0)
    assert novel.ap50 < 0.5  # each novel category's top detections sit on another category's boxes
    expected = (base.ap50 * base.num_categories + novel.ap50 * novel.num_categories) / everything.num_categories
    assert everything.ap50 == pytest.approx(expected)


def test_visual_generic_uses_exemplars_and_counts_skipped_categories(detector, world):
    data, exemplar_set = load_eval_set(world["gt"]), load_eval_set(world["exemplars"])
    names = [data.names[c] for c in data.category_ids]
    picks = pick_exemplars(exemplar_set, names, images_per_category=2, seed=0)
    assert data.names[world["dropped"]] not in picks
    for items in picks.values():
        assert 1 <= len(items) <= 2 and len({ex.path for ex in items}) == len(items)
        assert all(ex.path.parent.parent.name == "exemplars" for ex in items)
    assert pick_exemplars(exemplar_set, names, images_per_category=2, seed=0) == picks
    # A category's exemplars do not depend on the rest of the vocabulary.
    some = next(iter(picks))
    assert pick_exemplars(exemplar_set, [some], images_per_category=2, seed=0)[some] == picks[some]

    config = DetectorEvalConfig(mode="visual-generic", proposals="gt", exemplar_images=2)
    result = evaluate_detector(detector, world["gt"], config, exemplars=world["exemplars"])
    present = set(data.present_category_ids())
    with_exemplars = {c for c in data.category_ids if data.names[c] in picks}
    assert with_exemplars == present - {world["dropped"]}
    assert result.counts["categories_with_exemplars"] == len(with_exemplars)
    assert result.counts["categories_skipped"] == len(data.names) - len(with_exemplars)
    assert result.counts["skipped_categories_present"] == 1
    assert result.counts["skipped_boxes"] == sum(c == world["dropped"] for im in data.images for c in im.category_ids)
    assert {c.id for c in result.report.categories} == with_exemplars
    assert {p["category_id"] for p in result.predictions} <= with_exemplars
    assert result.settings["background"] == "none" and 0 <= result.report.ap50 <= 1

    with pytest.raises(EvaluationError, match="needs exemplars"):
        evaluate_detector(detector, world["gt"], config)


def test_mixed_mode_adds_each_name_to_its_exemplars(detector, world):
    data, exemplar_set = load_eval_set(world["gt"]), load_eval_set(world["exemplars"])
    picks = pick_exemplars(exemplar_set, [data.names[c] for c in data.category_ids], images_per_category=2, seed=0)
    for concept in generic_concepts(detector, picks, with_text=True):
        kinds = [s["kind"] for s in concept.sources]
        assert kinds[0] == "text" and concept.sources[0]["text"] == concept.name
        assert kinds[1:] == ["box"] * len(picks[concept.name])
    config = DetectorEvalConfig(mode="mixed", proposals="gt", exemplar_images=2)
    result = evaluate_detector(detector, world["gt"], config, exemplars=world["exemplars"])
    assert result.settings["mode"] == "mixed" and any("mixed" in note for note in result.notes)
    assert {p["category_id"] for p in result.predictions} <= {c for c in data.category_ids if data.names[c] in picks}
    with pytest.raises(EvaluationError, match="needs exemplars"):
        evaluate_detector(detector, world["gt"], config)


def test_visual_interactive_prompt_boxes_are_found(detector, world):
    data = load_eval_set(world["gt"])
    result = evaluate_detector(detector, world["gt"], DetectorEvalConfig(mode="visual-interactive", proposals="gt"))
    assert result.settings["background"] == "auto" and "counts as a found object" in result.to_markdown()
    assert result.counts["prompts"] == sum(len(set(im.category_ids)) for im in data.images)
    assert result.counts["prompt_boxes"] == result.counts["prompts"]
    # Only the categories present on an image are prompted there.
    for p in result.predictions:
        image = next(im for im in data.images if im.id == p["image_id"])
        assert p["category_id"] in image.category_ids
    three = evaluate_detector(detector, world["gt"],
                              DetectorEvalConfig(mode="visual-interactive", proposals="gt", prompt_boxes=3))
    assert three.counts["prompts"] == result.counts["prompts"] < three.counts["prompt_boxes"] <= 3 * result.counts["prompts"]
    assert 0 <= three.report.ap50 <= 1


def test_most_similar_pairs_and_hit_counting():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0.8, 0.6]]), dim=1)
    pairs = most_similar_pairs(e, 2)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (2, 3)] and pairs[0][2] > pairs[1][2]
    image = EvalImage(1, None, (100, 100), torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70], [20, 20, 40, 40]]), (7, 8, 7))
    results = [
        {"bbox": [0, 0, 10, 10], "score": 0.9},  # on a box of the positive (7)
        {"bbox": [50, 50, 20, 20], "score": 0.8},  # on the look-alike (8): a false positive
        {"bbox": [51, 51, 20, 20], "score": 0.2},  # below the threshold
        {"bbox": [80, 80, 10, 10], "score": 0.9},  # on nothing
    ]
    detections, false_positives, found = count_hits(results, image, 7, 8, threshold=0.3, match_iou=0.5)
    assert (detections, false_positives, found) == (3, 1, {0})


@pytest.mark.parametrize("kind", ["text", "visual"])
def test_negatives_mode(detector, world, kind):
    config = DetectorEvalConfig(mode="negatives", proposals="gt", pairs=2, negative_kind=kind, fp_threshold=0.0)
    result = evaluate_detector(detector, world["gt"], config, exemplars=world["exemplars"])
    assert result.report is None and len(result.pairs) == 4 and result.counts["directions"] == 4
    data = load_eval_set(world["gt"])
    first, second = result.pairs[0], result.pairs[1]
    assert (first.positive, first.negative) == (second.negative, second.positive)
    assert result.pairs[0].similarity >= result.pairs[2].similarity
    for pair in result.pairs:
        ids = data.ids_by_name()
        a, b = ids[pair.positive], ids[pair.negative]
        assert pair.images == sum(1 for im in data.images if a in im.category_ids or b in im.category_ids)
        w, n = pair.without, pair.with_negatives
        # At threshold 0 on ground-truth boxes every look-alike box is hit without negatives; negatives
        # only remove candidates, never add.
        assert w.lookalike_fp == w.lookalikes and w.found == w.positives
        assert n.lookalike_fp <= w.lookalike_fp and n.found <= w.found and n.detections <= w.detections
    totals = result.summary()
    assert totals["lookalike_fp_without"] == sum(p.without.lookalike_fp for p in result.pairs)
    assert "FP on look-alike" in result.to_markdown()


def test_result_log_resumes(detector, world, tmp_path, monkeypatch):
    log = tmp_path / "progress.jsonl"
    config = DetectorEvalConfig(mode="text", proposals="gt", batch_size=1)
    first = evaluate_detector(detector, world["gt"], config, log_path=log)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + 4
    # Interrupted mid-write: the cut line is dropped, its image recomputed, the rest read back.
    log.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    calls = []
    original = Detector.predict

    def counting(self, images, *args, **kwargs):
        calls.append(images)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Detector, "predict", counting)
    again = evaluate_detector(detector, world["gt"], config, log_path=log)
    assert len(calls) == 2 and again.predictions == first.predictions
    assert len(log.read_text().splitlines()) == 5
    # Other settings: the log starts over.
    evaluate_detector(detector, world["gt"], DetectorEvalConfig(mode="text", proposals="gt", max_images=1), log_path=log)
    assert len(log.read_text().splitlines()) == 2
    assert ResultLog(None, {}).done == {}


def test_cli(folder, world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-detector", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(mode in text for mode in ("visual-generic", "visual-interactive", "negatives", "--proposals"))

    out = tmp_path / "report"
    cache = str(tmp_path / "cache.sqlite")
    args = ["eval-detector", "--model", str(folder), "--gt", str(world["gt"]), "--proposals", "gt", "--cache", cache]
    assert main([*args, "--max-images", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "# Detector evaluation: text" in printed and (out / "report.md").read_text() == printed
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "text" and report["settings"]["images"] == 2 and "AP50_novel" in report["summary"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {p["image_id"] for p in predictions} <= {1, 2} and (out / "progress.jsonl").is_file()

    no_rpn = build_detector_folder(tmp_path / "no_rpn", rpn=False)
    for bad, message in [
        (["--mode", "visual-generic"], "needs exemplars"),
        (["--max-images", "0"], "max images must be >= 1"),
        (["--exemplar-images", "0", "--mode", "visual-generic", "--exemplars", str(world["exemplars"])], "exemplar images"),
        (["--gt", str(tmp_path / "missing.json")], "not found"),
    ]:
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert main(["eval-detector", "--model", str(no_rpn), "--gt", str(world["gt"]), "--cache", cache]) == 2
    assert "no proposal network" in capsys.readouterr().err
