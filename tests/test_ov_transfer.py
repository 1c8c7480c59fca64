"""RegionCLIP open-vocabulary transfer (``train detector --arch regionclip``): the loss drops when
overfitting a few scenes, only base concepts are classes and positives, an interrupted run resumes to
the same detector, the saved folder is a working detector with a learned background (and a clear error
without one), and the command line trains one."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision.ops import box_iou

from regionprompt.api import BACKGROUND_FILE, Detector
from regionprompt.cli import build_parser, main
from regionprompt.detect.regionclip.zeroshot import ZeroShotConfig, ZeroShotDetector
from regionprompt.detect.rpn import ProposalNetwork, RpnCard
from regionprompt.errors import CheckpointError
from regionprompt.proposals import Proposals
from regionprompt.train.ov_transfer import (
    BaseClasses,
    RegionClipTransferConfig,
    label_candidates,
    prepare,
    sample_rois,
    train_regionclip_detector,
    transfer_loss,
)
from regionprompt.vl.clip_model import build_clip
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

SCENE_SIZE = 96
# Small enough for one CPU thread: 64 px model input, 16 RoIs per image, one-template class embeddings.
TINY = {
    "scene_size": SCENE_SIZE, "num_scenes": 4, "batch_size": 2, "image_size": 64, "rois_per_image": 16,
    "rpn_proposals": 30, "templates": "single", "lr": 3e-3, "background_lr": 3e-3, "warmup_steps": 5,
    "flip": 0.0, "checkpoint_every": 1000,
}
OVERFIT_STEPS = 48


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _tiny_rpn() -> ProposalNetwork:
    return ProposalNetwork(RpnCard(image_size=SCENE_SIZE, widths=(8, 8, 8, 8), fpn_channels=8,
                                   anchor_sizes=((12.0,), (24.0,), (48.0,), (96.0,))))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random RN-tiny CLIP and a narrow random RPN, saved as model folders."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    build_clip("RN-tiny").save(root / "clip")
    _tiny_rpn().save(root / "rpn")
    return root / "clip", root / "rpn"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("det_cache")
    build_scene_cache(SceneCacheSpec("det-train", 0, 4, SCENE_SIZE), path, workers=1)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, models, cache_dir):
    """One overfitting run (shared by the loss and the detector-folder tests)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("overfit")
    config = RegionClipTransferConfig(steps=OVERFIT_STEPS, **TINY)
    result = train_regionclip_detector(config, out, clip=models[0], rpn=models[1], cache_dir=cache_dir, workers=1,
                                       log_every=1)
    assert result.finished
    return out


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


# ---- (1) learning ------------------------------------------------------------------------------------


def test_loss_drops_when_overfitting_a_few_scenes(trained):
    log = _log(trained)
    assert len(log) == OVERFIT_STEPS
    first, last = log[:5], log[-10:]
    # Printed for the record (pytest -s): the numbers quoted in reports.
    print({k: (round(_mean(first, k), 3), round(_mean(last, k), 3)) for k in ("loss", "loss_fg", "loss_bg")})
    assert _mean(last, "loss") < 0.3 * _mean(first, "loss")
    # Both parts learn: the region embeddings move towards their class texts, not only the background.
    assert _mean(last, "loss_fg") < 0.7 * _mean(first, "loss_fg")
    assert _mean(last, "loss_bg") < 0.3 * _mean(first, "loss_bg")
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in log)


def test_transfer_loss_is_focal_scaled_and_weights_background():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.0, 3.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 1])  # background = 2
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    pt = (-ce).exp()
    expected = ce * (1 - pt) ** 0.5
    expected[1] *= 0.8
    terms = transfer_loss(logits, labels, 2, 0.5, 0.8)
    assert torch.allclose(terms["loss"], expected.mean())
    assert torch.allclose(terms["loss_bg"], expected[1] / 3) and torch.allclose(terms["loss_fg"] + terms["loss_bg"], terms["loss"])
    plain = transfer_loss(logits, labels, 2, 0.0, 1.0)["loss"]
    assert torch.allclose(plain, ce.mean())
    # A RoI so confident that p_t == 1.0 in float32 (cosine margins / 0.01) keeps gradients finite.
    confident = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.5, 0.0]], requires_grad=True)
    transfer_loss(confident, torch.tensor([0, 1]), 2, 0.5, 0.8)["loss"].backward()
    assert torch.isfinite(confident.grad).all() and confident.grad[1].abs().sum() > 0


# ---- (2) base concepts only ---------------------------------------------------------------------------


def test_classes_are_exactly_the_base_concepts():
    classes = BaseClasses.load()
    concepts = load_concepts()
    assert set(classes.ids) == set(concepts.subset(split="base").ids)
    assert not set(classes.ids) & set(concepts.subset(split="novel").ids)
    assert classes.background == len(classes) == len(classes.names)


def test_a_novel_box_is_never_a_positive(tmp_path, models, cache_dir):
    """Scene 1 gets two novel objects: one unlabelled (as det-train has them) and one wrongly marked
    labelled; the RPN proposes every object box exactly. Both novel boxes must come out background."""
    concepts = load_concepts()
    novel = [c.id for c in concepts.subset(split="novel")][:2]
    shutil.copytree(cache_dir, tmp_path / "cache")
    lines = (tmp_path / "cache" / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    assert len(record["objects"]) >= 3
    record["objects"][0].update(concept_id=novel[0], labelled=False)
    record["objects"][1].update(concept_id=novel[1], labelled=True)
    lines[1] = json.dumps(record, sort_keys=True)
    (tmp_path / "cache" / "records.jsonl").write_text("\n".join(lines) + "\n")
    cache = SceneCache(tmp_path / "cache")
    every_box = torch.tensor([o["box"] for o in record["objects"]], dtype=torch.float32)
    # The test needs novel boxes that are not also (nearly) a base object's box.
    assert float(box_iou(every_box[:2], every_box[2:]).max()) < 0.5
    scene_1 = torch.from_numpy(np.array(cache.image(1))).permute(2, 0, 1).float() / 255

    class EveryObject:
        """Proposes scene 1's object boxes (novel ones included) on scene 1, nothing elsewhere."""

        def eval(self):
            return self

        def propose(self, images, *, max_proposals=300):
            return [Proposals(every_box.clone(), torch.ones(len(every_box))) if torch.equal(image, scene_1)
                    else Proposals(torch.zeros(0, 4), torch.zeros(0)) for image in images]

    config = RegionClipTransferConfig(steps=4, **{**TINY, "rois_per_image": 200})
    step = prepare(config, clip=build_clip("RN-tiny"), rpn=_tiny_rpn(), cache=cache)
    step.rpn = EveryObject()
    scale = config.image_size / SCENE_SIZE
    novel_boxes = every_box[:2] * scale
    base_ids = set(step.classes.ids)
    seen_novel = 0
    for s in range(2):  # one epoch: every scene once
        rois = step.rois(s)
        labels = rois.labels.split([len(b) for b in rois.boxes])
        for boxes, image_labels in zip(rois.boxes, labels):
            assert set(image_labels.tolist()) <= set(range(len(step.classes) + 1))
            for novel_box in novel_boxes:
                hit = (boxes - novel_box).abs().max(dim=1).values < 1e-4
                seen_novel += int(hit.sum())
                assert (image_labels[hit] == step.classes.background).all()
            positives = image_labels[image_labels != step.classes.background]
            assert all(step.classes.ids[int(c)] in base_ids for c in positives)
    assert seen_novel == 2  # both novel boxes were candidates (and background)
    # The labelled-but-novel box is not a ground-truth box either.
    boxes, ids = cache.labelled_targets(1)
    gt_boxes, gt_labels = step.classes.targets(boxes, ids)
    assert len(gt_boxes) == len(boxes) - 1 and novel[1] not in [step.classes.ids[int(c)] for c in gt_labels]


def test_labelling_and_sampling():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    candidates = torch.tensor([[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 20.0, 20.0], [21.0, 21.0, 40.0, 40.0], [50.0, 50, 60, 60]])
    labels = label_candidates(candidates, gt, torch.tensor([3, 7]), background=9, fg_iou=0.5)
    assert labels.tolist() == [3, 9, 7, 9]
    many = torch.tensor([1] * 10 + [9] * 30)
    pick = sample_rois(many, 9, 16, 0.25, np.random.default_rng(0))
    assert len(pick) == 16 and int((many[pick] != 9).sum()) == 4
    assert torch.equal(pick, sample_rois(many, 9, 16, 0.25, np.random.default_rng(0)))  # seeded


# ---- (3) resume ---------------------------------------------------------------------------------------


def test_resume_matches_an_uninterrupted_run(tmp_path, models, cache_dir):
    config = RegionClipTransferConfig(steps=6, **{**TINY, "flip": 0.5})
    kwargs = {"clip": models[0], "rpn": models[1], "cache_dir": cache_dir, "workers": 1}
    train_regionclip_detector(config, tmp_path / "straight", **kwargs)
    partial = train_regionclip_detector(config, tmp_path / "resumed", max_steps_this_run=3, **kwargs)
    assert not partial.finished and not (tmp_path / "resumed" / "model").exists()
    resumed = train_regionclip_detector(config, tmp_path / "resumed", **kwargs)
    assert resumed.resumed_from == 3 and resumed.finished
    a = load_file(str(tmp_path / "straight" / "model" / "clip" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "clip" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bg_a = load_file(str(tmp_path / "straight" / "model" / BACKGROUND_FILE))["background"]
    bg_b = load_file(str(tmp_path / "resumed" / "model" / BACKGROUND_FILE))["background"]
    assert torch.equal(bg_a, bg_b)
    # It trained: the image tower's res4 changed, its stem (frozen) and the text side did not.
    start = load_file(str(models[0] / "model.safetensors"))
    assert not torch.equal(a["visual.layer3.0.conv1.weight"], start["visual.layer3.0.conv1.weight"])
    assert torch.equal(a["visual.conv1.weight"], start["visual.conv1.weight"])
    assert torch.equal(a["token_embedding.weight"], start["token_embedding.weight"])
    # Resuming onto another CLIP is refused.
    torch.manual_seed(1)
    build_clip("RN-tiny").save(tmp_path / "other_clip")
    with pytest.raises(CheckpointError, match="different settings"):
        train_regionclip_detector(config, tmp_path / "resumed", **{**kwargs, "clip": tmp_path / "other_clip"})


# ---- (4) the detector folder ------------------------------------------------------------------------


def test_saved_folder_is_a_detector_with_the_learned_background(trained, cache_dir):
    folder = trained / "model"
    header = json.loads((folder / "detector.json").read_text())
    assert header["background"] == BACKGROUND_FILE and header["config"]["background"] == "learned"
    assert header["config"]["templates"] == "single" and header["config"]["input_size"] == 64
    detector = Detector.load(folder, cache=None)
    assert detector.kind == "regionclip-zeroshot" and detector.config.background == "learned"
    trained_background = torch.load(trained / "checkpoint.pt", weights_only=True)["model"]["background"]
    assert torch.equal(detector.engine.background_embedding, trained_background)
    card = json.loads((folder / "clip" / "card.json").read_text())
    assert card["training"]["stage"].startswith("RegionCLIP open-vocabulary transfer")

    image = np.asarray(SceneCache(cache_dir).image(1))
    [found] = detector.predict(image, text="dog, red apple", threshold=0.0)
    assert len(found) > 0 and set(found.names) == {"dog", "red apple"}
    assert torch.all((found.scores >= 0) & (found.scores <= 1))

    # The learned background scores as it was trained: p = exp(s/T) / (exp(s/T) + exp(r.b/T)), one prompt.
    boxes = torch.tensor([[5.0, 5.0, 40.0, 40.0], [30.0, 20.0, 90.0, 70.0], [0.0, 0.0, 96.0, 96.0]])
    exact = detector.reconfigure(nms_iou=1.0, max_detections=1000)
    assert torch.equal(exact.engine.background_embedding, detector.engine.background_embedding)
    [dets] = exact.predict(image, text="dog", proposals=[boxes], threshold=0.0)
    from PIL import Image

    regions = exact.engine.regions.embed(Image.fromarray(image), boxes)
    text = exact.engine.embedder.embed(["dog"])[0]
    t = exact.config.temperature
    expected = torch.sigmoid((regions @ text - regions @ exact.engine.background_embedding) / t).sqrt()
    order = torch.argsort(expected, descending=True)
    assert len(dets) == 3 and torch.allclose(dets.scores, expected[order], atol=1e-5)

    # Other modes still work on the same models, and switching back finds the background again.
    assert detector.reconfigure(background="none").reconfigure(background="learned").config.background == "learned"


def test_learned_background_requires_the_embedding(trained, tmp_path):
    broken = tmp_path / "no_background"
    shutil.copytree(trained / "model", broken)
    header = json.loads((broken / "detector.json").read_text())
    del header["background"]
    (broken / "detector.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="learned.*background"):
        Detector.load(broken, cache=None)

    missing = tmp_path / "missing_file"
    shutil.copytree(trained / "model", missing)
    (missing / BACKGROUND_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        Detector.load(missing, cache=None)

    clip = build_clip("RN-tiny")
    with pytest.raises(CheckpointError, match="learned"):
        ZeroShotDetector(clip, None, ZeroShotConfig(background="learned"))
    with pytest.raises(CheckpointError, match="shape"):
        Detector.from_models(clip, None, ZeroShotConfig(background="learned"), background=torch.zeros(3))

    # A detector without a learned background writes the folder exactly as before (no background entry).
    plain = Detector.from_models(clip, None, ZeroShotConfig(), cache=None).save(tmp_path / "plain")
    assert "background" not in json.loads((plain / "detector.json").read_text())
    assert not (plain / BACKGROUND_FILE).exists()
    assert Detector.load(plain, cache=None).engine.background_embedding is None


# ---- (5) command line -----------------------------------------------------------------------------------


def test_cli_help_and_tiny_run(tmp_path, models, cache_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "detector", "--arch", "regionclip", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--rpn" in text and "--background-weight" in text and "--focal-gamma" in text and "--cycle" not in text
    # T-Rex2 stays the default architecture with its own options.
    args = build_parser().parse_args(["train", "detector", "--out", "x", "--cycle", "tb"])
    assert args.arch == "trex2" and args.cycle == "tb"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "detector", "--arch", "regionclip", "--out", "x"])  # no --clip / --rpn

    out = tmp_path / "run"
    argv = ["train", "detector", "--arch", "regionclip", "--clip", str(models[0]), "--rpn", str(models[1]),
            "--out", str(out), "--cache", str(cache_dir), "--workers", "1", "--threads", "1", "--no-text-cache",
            "--steps", "2"]
    for key, value in TINY.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == 0
    assert "trained 2 steps (finished)" in capsys.readouterr().out
    detector = Detector.load(out / "model", cache=None)
    assert detector.config.background == "learned" and detector.engine.proposal_source is not None
    bad = [a if a != str(out) else str(tmp_path / "bad") for a in argv] + ["--fg-iou", "0"]
    assert main(bad) == 2  # an invalid recipe is a clean error (exit 2), nothing trained
    assert not (tmp_path / "bad").exists()


def test_tuned_namer_interpolates_the_image_tower_between_start_and_transfer(trained, models):
    from regionprompt.errors import RegionPromptError
    from regionprompt.interop.checkpoints import load_checkpoint
    from regionprompt.train.namer_tuning import tuned_namer, tuned_tower

    tower, step, info = tuned_tower(trained / "checkpoint.pt")
    assert step == OVERFIT_STEPS and info["config"]["steps"] == OVERFIT_STEPS
    start = load_checkpoint(models[0]).visual.state_dict()
    record = {"stage": "test"}
    at = {mix: tuned_namer(models[0], tower, mix, record).visual.state_dict() for mix in (0.0, 0.5, 1.0)}
    moved = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], tower[k])]
    assert moved  # the transfer trained the tower
    for k in moved:
        assert torch.equal(at[0.0][k], start[k]) and torch.allclose(at[1.0][k], tower[k])
        assert torch.allclose(at[0.5][k], (start[k] + tower[k]) / 2, atol=1e-6)
    namer = tuned_namer(models[0], tower, 0.5, record)
    assert namer.card.training["mix"] == 0.5 and namer.card.weights_hash is None
    with pytest.raises(RegionPromptError, match="mix"):
        tuned_namer(models[0], tower, 1.5, record)
    with pytest.raises(RegionPromptError, match="unreadable training checkpoint"):
        tuned_tower(trained / "train_log.jsonl")
