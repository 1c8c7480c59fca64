"""RegionCLIP student training: every loss is finite, a tiny run lowers the loss, ablation flags drop
terms, an interrupted run resumes to the same weights, and the student is a loadable CLIP model."""

import json
import math

import numpy as np
import pytest
import torch

from regionprompt.cli import main
from regionprompt.devices import resolve_device
from regionprompt.errors import RegionPromptError
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.regionclip.label_store import PseudoLabels, PseudoLabelWriter
from regionprompt.regionclip.losses import (
    concept_contrastive_loss,
    image_text_loss,
    topk_distillation_loss,
)
from regionprompt.regionclip.oracle import SceneBoxProposals
from regionprompt.regionclip.pseudo_labels import (
    PseudoLabelConfig,
    identity_of,
    pseudo_label,
)
from regionprompt.train.regions import RegionBatches, RegionPretrainConfig, prepare, repeat_factors, train_regions
from regionprompt.vl.clip_model import CLIP_TEXT_KEYS, build_clip
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

TINY = {"batch_size": 4, "regions_per_image": 3, "warmup_steps": 2, "checkpoint_every": 4}


def _ground_truth_labels(cache, teacher, names, out, top_k=3):
    """Pseudo labels as a perfect teacher would give them: every true box with its own concept first.

    A random teacher labels every region with the same concept, which leaves the contrastive loss
    nothing to contrast; true labels make the losses (and their decrease) meaningful.
    """
    config = PseudoLabelConfig(templates="single", top_k=top_k)
    writer = PseudoLabelWriter(out, identity_of(teacher.weights_hash(), names, "ground truth", cache, config), {}, names)
    rng = torch.Generator().manual_seed(0)
    rows = {"image_index": [], "boxes": [], "concept": [], "topk_index": [], "topk_prob": [], "objectness": []}
    for i, record in enumerate(cache.records):
        for obj in record["objects"]:
            concept = names.index(load_concepts().by_id(obj["concept_id"]).name)
            others = [c for c in torch.randperm(len(names), generator=rng).tolist() if c != concept][: top_k - 1]
            rows["image_index"].append(i)
            rows["boxes"].append(obj["box"])
            rows["concept"].append(concept)
            rows["topk_index"].append([concept, *others])
            rows["topk_prob"].append([0.8, 0.15, 0.05][:top_k])
            rows["objectness"].append(1.0)
    writer.append(0, len(cache), {k: torch.tensor(v) for k, v in rows.items()})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """12 pretrain scenes at 64 px, a random RN-tiny teacher, ground-truth labels (``labels``) and the
    real pipeline's pseudo labels on oracle proposals (``pipeline_labels``)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("regions")
    cache = build_scene_cache(SceneCacheSpec("pretrain", 0, 12, 64), root / "cache", workers=1)
    torch.manual_seed(0)
    build_clip("RN-tiny").save(root / "teacher")
    teacher = load_checkpoint(root / "teacher")
    concepts = load_concepts()
    names = sorted({concepts.by_id(o["concept_id"]).name for r in cache.records for o in r["objects"]})
    _ground_truth_labels(cache, teacher, names, root / "labels")
    source = SceneBoxProposals(cache, jittered_per_object=1, random_boxes=2)
    config = PseudoLabelConfig(templates="single", top_k=3, max_proposals=8)
    pseudo_label(teacher, source, cache, names, root / "pipeline_labels", config, proposal_id=source.identity)
    return root


def _kwargs(root):
    return {"teacher": root / "teacher", "labels_dir": root / "labels", "cache_dir": root / "cache"}


def test_each_loss_is_finite_and_the_student_starts_as_the_teacher(setup):
    for source in ("teacher", "topk"):
        trainer = prepare(RegionPretrainConfig(distill_source=source, **TINY), **_kwargs(setup))
        with torch.no_grad():
            losses = trainer.losses(0)
        assert set(losses) == {"distill", "contrastive", "image_text", "loss"}
        assert all(torch.isfinite(v) for v in losses.values())
        assert float(losses["loss"]) == pytest.approx(float(losses["distill"] + losses["contrastive"] + losses["image_text"]), rel=1e-5)
        if source == "teacher":
            assert float(losses["distill"]) < 1e-4  # an identical copy: nothing to distil yet
        assert float(losses["contrastive"]) > 0 and float(losses["image_text"]) > 0
    assert trainer.batch(0).concept.numel() > 0


def test_losses_on_known_inputs():
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1]]), dim=1)
    concepts = torch.tensor([[1.0, 0], [0, 1.0]])
    good = concept_contrastive_loss(emb, concepts, torch.tensor([0, 0, 1]), 0.1)
    bad = concept_contrastive_loss(emb, concepts, torch.tensor([1, 1, 0]), 0.1)
    assert float(good) < 0.1 < float(bad)
    assert float(image_text_loss(emb[[0, 2]], concepts, 0.01)) < 1e-6
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    assert float(topk_distillation_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[1.0, 0.0]]))) < 0.02
    assert float(topk_distillation_loss(logits, torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.0]]))) > 4


def test_tiny_training_lowers_the_loss_and_saves_a_student(setup, tmp_path):
    config = RegionPretrainConfig(steps=20, lr=1e-4, **{**TINY, "checkpoint_every": 100})
    result = train_regions(config, tmp_path, **_kwargs(setup))
    assert result.finished
    trainer = prepare(config, **_kwargs(setup))
    steps = range(3)
    with torch.no_grad():
        before = sum(float(trainer.losses(s)["loss"]) for s in steps)
        student = load_checkpoint(tmp_path / "model")
        trainer.student = student
        after = sum(float(trainer.losses(s)["loss"]) for s in steps)
    assert after < 0.85 * before, (before, after)
    teacher = load_checkpoint(setup / "teacher")
    assert student.card.name == teacher.card.name and student.card.vision == teacher.card.vision
    assert student.card.training["recipe"]["steps"] == 20
    s, t = student.state_dict(), teacher.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in t if k.startswith(CLIP_TEXT_KEYS))  # text side frozen
    assert not torch.equal(s["visual.layer4.0.conv1.weight"], t["visual.layer4.0.conv1.weight"])
    assert torch.equal(s["visual.bn1.weight"], t["visual.bn1.weight"])  # BatchNorm frozen
    assert teacher.weights_hash() == trainer.teacher.weights_hash()


def test_ablation_flags_drop_their_loss(setup):
    for dropped in ("distill", "contrastive", "image_text"):
        config = RegionPretrainConfig(**{f"{dropped}_weight": 0.0}, **TINY)
        with torch.no_grad():
            losses = prepare(config, **_kwargs(setup)).losses(0)
        assert dropped not in losses and len(losses) == 3
        kept = [v for k, v in losses.items() if k != "loss"]
        assert float(losses["loss"]) == pytest.approx(float(sum(kept)), rel=1e-5)
    with torch.no_grad():
        weighted = prepare(RegionPretrainConfig(contrastive_weight=2.0, **TINY), **_kwargs(setup)).losses(0)
    assert float(weighted["loss"]) == pytest.approx(
        float(weighted["distill"] + 2 * weighted["contrastive"] + weighted["image_text"]), rel=1e-5)
    with pytest.raises(RegionPromptError, match="not all 0"):
        prepare(RegionPretrainConfig(distill_weight=0, contrastive_weight=0, image_text_weight=0), **_kwargs(setup))


def test_interrupted_training_resumes_to_the_same_weights(setup, tmp_path):
    config = RegionPretrainConfig(steps=4, distill_source="topk", **TINY)
    train_regions(config, tmp_path / "straight", **_kwargs(setup))
    partial = train_regions(config, tmp_path / "resumed", max_steps_this_run=2, **_kwargs(setup))
    assert not partial.finished and not (tmp_path / "resumed" / "model").exists()
    resumed = train_regions(config, tmp_path / "resumed", **_kwargs(setup))
    assert resumed.resumed_from == 2 and resumed.finished
    a = load_checkpoint(tmp_path / "straight" / "model").state_dict()
    b = load_checkpoint(tmp_path / "resumed" / "model").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_with_a_dropped_loss_and_refuses_another_teacher(setup, tmp_path, capsys):
    args = ["train", "regions", "--teacher", str(setup / "teacher"), "--labels", str(setup / "pipeline_labels"),
            "--cache", str(setup / "cache"), "--steps", "2", "--batch-size", "4", "--regions-per-image", "2",
            "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "run"), "--distill-weight", "0"]) == 0
    assert "trained 2 steps (finished)" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert "distill" not in log[-1] and {"contrastive", "image_text", "loss"} <= log[-1].keys()
    assert load_checkpoint(tmp_path / "run" / "model").card.training["recipe"]["distill_weight"] == 0.0
    torch.manual_seed(5)
    build_clip("RN-tiny").save(tmp_path / "other")
    args[3] = str(tmp_path / "other")
    assert main([*args, "--out", str(tmp_path / "run2")]) == 2
    assert "another teacher" in capsys.readouterr().err


def test_repeat_factors_follow_lvis_and_oversample_images_of_rare_concepts(setup):
    labels = PseudoLabels.open(setup / "labels")
    per_image = [set(labels.regions(i).concept.tolist()) for i in range(len(labels))]
    counts = {}
    for concepts in per_image:
        for c in concepts:
            counts[c] = counts.get(c, 0) + 1
    threshold = 0.5
    factors = repeat_factors(labels, threshold)
    for i, concepts in enumerate(per_image):
        expected = max([1.0] + [math.sqrt(threshold / (counts[c] / len(labels))) for c in concepts])
        assert factors[i] == pytest.approx(expected)
    assert factors.max() > 1.0  # with 12 scenes most concepts are in fewer than half of the images
    assert (repeat_factors(labels, 0.0) == 1.0).all()

    plain = RegionBatches(labels, SceneCache(setup / "cache"), 4, 3, seed=0)
    balanced = RegionBatches(labels, SceneCache(setup / "cache"), 4, 3, seed=0, repeat_threshold=threshold)
    assert sorted(plain.pool.tolist()) == list(range(len(labels)))
    # Every image is kept at least once, and images are repeated about as often as their factors say.
    assert set(balanced.pool.tolist()) == set(range(len(labels)))
    assert len(balanced.pool) == pytest.approx(factors.sum(), abs=len(labels) ** 0.5 + 1)
    repeats = np.bincount(balanced.pool, minlength=len(labels))
    assert ((repeats == np.floor(factors)) | (repeats == np.ceil(factors))).all()
    # The step -> batch map is a pure function of (seed, step): a rebuilt sampler gives the same batches.
    again = RegionBatches(labels, SceneCache(setup / "cache"), 4, 3, seed=0, repeat_threshold=threshold)
    for step in (0, 1, balanced.per_epoch + 1):
        assert torch.equal(balanced(step).concept, again(step).concept)


def test_config_and_cli_check_the_repeat_threshold_and_the_device(setup, tmp_path, capsys):
    with pytest.raises(RegionPromptError, match="repeat_threshold"):
        RegionPretrainConfig(repeat_threshold=2.0).validate()
    with pytest.raises(RegionPromptError, match="unknown device"):
        resolve_device("tpu-ish")
    assert resolve_device(None) == torch.device("cpu")
    args = ["train", "regions", "--teacher", str(setup / "teacher"), "--labels", str(setup / "labels"),
            "--cache", str(setup / "cache"), "--steps", "2", "--batch-size", "4", "--threads", "1",
            "--out", str(tmp_path / "run")]
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main([*args, "--device", "cpu", "--repeat-threshold", "0.5"]) == 0
    assert load_checkpoint(tmp_path / "run" / "model").card.training["recipe"]["repeat_threshold"] == 0.5
