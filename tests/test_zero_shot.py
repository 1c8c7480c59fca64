"""Zero-shot teacher measurements: the metric helpers on known cases, and the region benchmark end to end."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from regionprompt.eval.zero_shot import (
    average_precision,
    held_out_synonyms,
    multilabel_concept_ap,
    region_classification,
    retrieval_recall,
)
from regionprompt.vl.clip_model import build_clip
from regionprompt.world.build import build_world


def test_average_precision_known_values():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.9]), np.array([1, 0])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.3]), np.array([0])))


def test_retrieval_recall_identity_and_shuffled():
    emb = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    assert retrieval_recall(emb, emb).recall == {1: 1.0, 5: 1.0}
    shifted = retrieval_recall(emb, emb.roll(1, dims=0), ks=(1,))
    assert shifted.recall[1] < 0.2


def test_multilabel_ap_perfect_and_split_means():
    presence = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    concept = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    result = multilabel_concept_ap(images, concept, presence, ["base", "novel", "novel"])
    assert result.num_concepts == 2 and result.mean_ap == 1.0 and result.by_split == {"base": 1.0, "novel": 1.0}
    worse = multilabel_concept_ap(images.flip(0), concept, presence, ["base", "novel", "novel"])
    assert worse.mean_ap < 1.0


def test_held_out_synonyms_skip_seen_words_and_other_names():
    concepts = [
        SimpleNamespace(id=1, name="backpack", synonyms=("school bag",), names=("backpack", "school bag")),
        SimpleNamespace(id=2, name="doughnut", synonyms=(), names=("doughnut",)),
    ]
    lvis = [{"name": "backpack", "synonyms": ["knapsack", "rucksack"]}, {"name": "doughnut", "synonyms": ["donut", "backpack"]}]
    captions = ["A school bag on a table.", "Two knapsacks and a knapsack.", "a doughnut"]
    assert held_out_synonyms(captions, concepts, lvis) == {1: "rucksack", 2: "donut"}


@pytest.fixture(scope="module")
def tiny_test_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world(out, split="test", num_images=4, seed=3)
    return out / "annotations.json"


@pytest.mark.parametrize("method", ["roi", "crop"])
def test_region_classification_runs_on_a_real_build(tiny_test_world, method):
    torch.manual_seed(0)
    model = build_clip("RN-tiny").eval()
    report = region_classification(model, tiny_test_world, method=method, templates="single", input_size=64, top_k=3)
    gt = json.loads(tiny_test_world.read_text())
    assert report.num_gt == len(gt["annotations"])
    assert report.num_predictions == 3 * len(gt["annotations"])
    assert {g.name for g in report.splits} >= {"all", "base"}
    # A random model is no classifier: AP50 over ~1,177 classes stays near zero.
    assert report.ap50 < 0.2


def test_eval_teacher_cli_writes_all_measurements(tmp_path, tiny_test_world, capsys):
    from regionprompt.cli import main

    torch.manual_seed(0)
    build_clip("RN-tiny").save(tmp_path / "model")
    code = main(["eval-teacher", "--model", str(tmp_path / "model"), "--test", str(tiny_test_world.parent),
                 "--val-cache", str(tmp_path / "val"), "--val-images", "12", "--input-size", "64",
                 "--templates", "single", "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "teacher_eval.json").read_text())
    assert result["retrieval"]["images"] == 12 and 0.0 <= result["retrieval"]["R@1"] <= result["retrieval"]["R@5"] <= 1.0
    assert set(result["region_classification"]) == {"crop", "roi"}
    assert result["multilabel"]["concepts"] > 0 and "mAP_random_text" in result["multilabel"]
    assert "GT-box region classification, roi" in capsys.readouterr().out
