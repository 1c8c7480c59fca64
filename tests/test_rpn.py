"""The class-agnostic proposal network: persistence, box geometry, training, recall evaluation, CLI."""

import json

import numpy as np
import pytest
import torch

from regionprompt.cli import main
from regionprompt.detect.rpn import CARD_FILE, WEIGHTS_FILE, ProposalNetwork, RpnCard
from regionprompt.errors import CheckpointError
from regionprompt.eval.proposals import (
    IOU_THRESHOLDS,
    evaluate_proposals,
    match_proposals,
    recall_report,
)
from regionprompt.proposals import Proposals
from regionprompt.train.rpn import RpnTrainConfig, train_rpn
from regionprompt.world.build import build_world
from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache

TINY_CARD = RpnCard(
    name="rpn-tiny",
    image_size=96,
    widths=(8, 16, 32, 64),
    fpn_channels=16,
    anchor_sizes=((4.8, 6.8), (9.6, 13.6), (19.2, 27.2), (38.4, 54.3)),
)
TINY_TRAIN = {"image_size": 96, "width": 8, "fpn_channels": 16, "num_scenes": 16, "batch_size": 4,
              "warmup_steps": 3, "lr": 3e-3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small convolutions on a shared 2-core machine: a second thread mostly waits (6x slower when busy).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def det_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("det_cache")
    build_scene_cache(SceneCacheSpec("det-train", 0, 16, 96), directory, workers=1)
    return directory


@pytest.fixture(scope="module")
def test_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_test")
    build_world(out, split="test", num_images=4, seed=1)
    return out / "annotations.json"


def _scene_images(cache_dir, count=2):
    from regionprompt.world.scene_cache import SceneCache

    pixels = np.array(SceneCache(cache_dir).images[:count])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


# ---- model ---------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_proposals(tmp_path, det_cache):
    model = ProposalNetwork(TINY_CARD)
    images = _scene_images(det_cache)
    before = model.propose(images, max_proposals=50)
    card = model.save(tmp_path / "rpn")
    assert (tmp_path / "rpn" / WEIGHTS_FILE).is_file() and card.weights_hash
    loaded = ProposalNetwork.load(tmp_path / "rpn")
    assert loaded.card == card
    after = loaded.propose(images, max_proposals=50)
    for a, b in zip(before, after):
        assert len(a) == 50
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.objectness, b.objectness)


def test_boxes_are_in_input_pixels_for_non_square_images(det_cache):
    model = ProposalNetwork(TINY_CARD)
    square = _scene_images(det_cache, 1)  # 96 x 96 = the card's size: no internal resize
    height, width = 150, 260
    wide = torch.nn.functional.interpolate(square, size=(height, width), mode="bilinear", align_corners=False)
    back = torch.nn.functional.interpolate(wide, size=(96, 96), mode="bilinear", align_corners=False, antialias=True)
    reference = model.propose(back, max_proposals=40)[0]  # what the network sees inside propose(wide)
    got = model.propose(wide, max_proposals=40)[0]
    assert isinstance(got, Proposals) and len(got) == 40
    scale = torch.tensor([width / 96, height / 96, width / 96, height / 96])
    expected = reference.boxes * scale
    expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
    assert torch.allclose(got.boxes, expected, atol=1e-3)
    assert torch.equal(got.objectness, reference.objectness)
    b = got.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= width).all() and (b[:, 3] <= height).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert got.boxes[:, 2].max() > 96 * 1.5  # really spread over the wide image, not the 96 px square
    s = got.objectness
    assert ((s >= 0) & (s <= 1)).all() and (s[:-1] >= s[1:]).all()


def test_bad_inputs_and_cards_are_refused():
    model = ProposalNetwork(TINY_CARD)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.propose(torch.zeros(3, 96, 96))
    with pytest.raises(ValueError, match="float"):
        model.propose(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))
    with pytest.raises(CheckpointError, match="multiple of 32"):
        RpnCard(image_size=100)
    with pytest.raises(CheckpointError, match="fg_iou_thresh"):
        RpnCard(bg_iou_thresh=0.8)


def test_load_names_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError, match="no such RPN model folder"):
        ProposalNetwork.load(tmp_path / "nothing")
    folder = tmp_path / "rpn"
    ProposalNetwork(TINY_CARD).save(folder)
    (folder / WEIGHTS_FILE).rename(tmp_path / "weights.bak")
    with pytest.raises(CheckpointError, match=f"missing {WEIGHTS_FILE}"):
        ProposalNetwork.load(folder)
    (tmp_path / "weights.bak").rename(folder / WEIGHTS_FILE)
    # A card describing another architecture: shapes no longer fit.
    card = json.loads((folder / CARD_FILE).read_text())
    card["fpn_channels"] = 24
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        ProposalNetwork.load(folder)
    (folder / CARD_FILE).write_text('{"name": "x", "layers": 3}')
    with pytest.raises(CheckpointError, match="unknown fields"):
        ProposalNetwork.load(folder)
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ProposalNetwork.load(folder)


# ---- training ------------------------------------------------------------------------------------


def _fixed_batch_loss(model, images, boxes):
    """Total RPN loss on a fixed batch with a fixed anchor sample (BN in inference mode)."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        return sum(v.item() for v in model.losses(images, boxes).values())


def test_tiny_training_lowers_the_loss_and_finds_the_objects(tmp_path, det_cache):
    from regionprompt.world.scene_cache import SceneCache

    config = RpnTrainConfig(steps=40, checkpoint_every=100, **TINY_TRAIN)
    result = train_rpn(config, tmp_path, cache_dir=det_cache, workers=1)
    assert result.finished
    trained = ProposalNetwork.load(tmp_path / "model")
    assert trained.card.training["recipe"]["steps"] == 40
    torch.manual_seed(config.seed)
    fresh = ProposalNetwork(config.card())  # the same initial weights the run started from

    cache = SceneCache(det_cache)
    images = _scene_images(det_cache, 16)
    gt = [torch.from_numpy(cache.labelled_targets(i)[0]) for i in range(16)]
    before, after = _fixed_batch_loss(fresh, images, gt), _fixed_batch_loss(trained, images, gt)
    assert after < 0.5 * before, (before, after)

    def recall(model):
        props = [p.boxes for p in model.propose(images, max_proposals=100)]
        return recall_report(gt, [["base"] * len(b) for b in gt], props, limits=(100,)).get("all", 100).recall50

    assert recall(trained) > recall(fresh) + 0.15, (recall(trained), recall(fresh))


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, det_cache):
    config = RpnTrainConfig(steps=8, checkpoint_every=5, **TINY_TRAIN)
    train_rpn(config, tmp_path / "straight", cache_dir=det_cache, workers=1)
    partial = train_rpn(config, tmp_path / "resumed", cache_dir=det_cache, workers=1, max_steps_this_run=5)
    assert not partial.finished and not (tmp_path / "resumed" / "model").exists()
    resumed = train_rpn(config, tmp_path / "resumed", cache_dir=det_cache, workers=1)
    assert resumed.resumed_from == 5 and resumed.finished
    a = ProposalNetwork.load(tmp_path / "straight" / "model").state_dict()
    b = ProposalNetwork.load(tmp_path / "resumed" / "model").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- recall evaluation ---------------------------------------------------------------------------


def test_ground_truth_as_proposals_has_full_recall_and_shifted_boxes_less():
    gt = [torch.tensor([[0.0, 0, 100, 100], [150, 150, 190, 170]]), torch.tensor([[10.0, 20, 60, 80]])]
    groups = [["base", "novel"], ["base"]]
    perfect = recall_report(gt, groups, gt, limits=(100, 300))
    for group in ("base", "novel", "all"):
        assert perfect.get(group, 100).average_recall == 1.0
    # Shifting a 100 px box by 10 px gives IoU 90/110 = 0.818: matched at thresholds 0.50..0.80 only.
    shifted = [torch.tensor([[10.0, 0, 110, 100]])]
    report = recall_report([gt[0][:1]], [["base"]], shifted, limits=(1,))
    assert report.get("base", 1).recalls == tuple(1.0 if t <= 0.8 else 0.0 for t in IOU_THRESHOLDS)
    assert report.get("base", 1).average_recall == pytest.approx(0.7)
    assert np.isnan(report.get("novel", 1).average_recall) and report.get("novel", 1).num_gt == 0


def test_matching_is_one_to_one_and_respects_the_limit():
    gt = torch.tensor([[0.0, 0, 50, 50], [2, 2, 52, 52]])  # two near-identical objects
    one = torch.tensor([[1.0, 1, 51, 51]])
    assert match_proposals(gt, one, (10,))[0, 0].sum() == 1  # one proposal cannot recall both
    # The good proposal comes second: with a limit of 1 nothing is found.
    props = torch.tensor([[200.0, 200, 220, 220], [0, 0, 50, 50]])
    hits = match_proposals(gt[:1], props, (1, 2))
    assert not hits[0].any() and hits[1].all()


def test_recall_equals_pycocotools():
    pycoco = pytest.importorskip("pycocotools.cocoeval")
    from pycocotools.coco import COCO

    rng = np.random.default_rng(0)
    gt_boxes, props, images, annotations, results = [], [], [], [], []
    for image_id in range(1, 7):
        xy = rng.uniform(0, 200, (5, 2))
        wh = rng.uniform(10, 100, (5, 2))
        boxes = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
        noise = torch.tensor(rng.normal(0, 8, (40, 4)), dtype=torch.float32)
        candidates = boxes.repeat(8, 1) + noise
        candidates[:, 2:] = torch.maximum(candidates[:, 2:], candidates[:, :2] + 1)
        gt_boxes.append(boxes)
        props.append(candidates)
        images.append({"id": image_id, "width": 320, "height": 320})
        for b in boxes.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for rank, b in enumerate(candidates.tolist()):
            results.append({"image_id": image_id, "category_id": 1, "score": 1.0 - rank / 100,
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    coco.createIndex()
    evaluator = pycoco.COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.params.useCats = 0
    evaluator.params.maxDets = [1, 10, 20]
    evaluator.evaluate()
    evaluator.accumulate()
    expected = evaluator.eval["recall"][:, 0, 0, :]  # (T, M): area "all"
    ours = recall_report(gt_boxes, [["base"] * 5] * 6, props, limits=(1, 10, 20))
    for m, k in enumerate((1, 10, 20)):
        assert np.allclose(ours.get("all", k).recalls, expected[:, m], atol=1e-9)


class _GroundTruthSource:
    """Proposes the ground-truth boxes of a build, image by image in file order: full recall expected."""

    def __init__(self, annotations):
        data = json.loads(annotations.read_text())
        self.pending = [
            [[x, y, x + w, y + h] for a in data["annotations"] if a["image_id"] == image["id"] for x, y, w, h in [a["bbox"]]]
            for image in data["images"]
        ]

    def propose(self, images, *, max_proposals=300):
        out = []
        for _ in images:
            boxes = torch.tensor(self.pending.pop(0), dtype=torch.float32).reshape(-1, 4)
            out.append(Proposals(boxes, torch.ones(len(boxes))))
        return out


def test_evaluate_proposals_on_a_world_build(test_build):
    report = evaluate_proposals(_GroundTruthSource(test_build), test_build, batch_size=3)
    data = json.loads(test_build.read_text())
    splits = {c["id"]: c["split"] for c in data["categories"]}
    assert report.num_images == 4
    assert report.get("all", 100).num_gt == len(data["annotations"])
    assert report.get("novel", 300).num_gt == sum(splits[a["category_id"]] == "novel" for a in data["annotations"])
    for group in ("base", "all"):
        assert report.get(group, 100).average_recall == 1.0
    assert "| novel |" in report.to_markdown()
    json.dumps(report.to_dict(), allow_nan=False)


# ---- command line --------------------------------------------------------------------------------


def test_cli_help_and_bad_model_folder(tmp_path, capsys, test_build):
    for command in (["train", "rpn"], ["eval-proposals"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "usage: regionprompt " + " ".join(command) in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    code = main(["eval-proposals", "--model", str(tmp_path / "empty"), "--gt", str(test_build)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "missing card.json" in err and len(err.strip().splitlines()) == 1


def test_cli_eval_proposals_writes_a_report(tmp_path, capsys, test_build):
    ProposalNetwork(TINY_CARD).save(tmp_path / "rpn")
    out = tmp_path / "report.json"
    assert main(["eval-proposals", "--model", str(tmp_path / "rpn"), "--gt", str(test_build), "--out", str(out)]) == 0
    assert "AR@100" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["num_images"] == 4 and report["limits"] == [100, 300]
    assert out.with_suffix(".md").is_file()
