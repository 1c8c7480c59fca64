"""RegionCLIP pseudo labels: the store round-trips, resumes without loss or duplication, refuses other
settings, and the precision report scores known cases exactly."""

import json
import shutil

import pytest
import torch

from regionprompt.cli import main
from regionprompt.errors import RegionPromptError
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.regionclip.label_store import (
    MANIFEST_FILE,
    PseudoLabelError,
    PseudoLabels,
    PseudoLabelWriter,
    pool_hash,
)
from regionprompt.regionclip.oracle import SceneBoxProposals
from regionprompt.regionclip.precision import (
    match_labels,
    pool_concept_ids,
    precision_report,
)
from regionprompt.regionclip.pseudo_labels import (
    PseudoLabelConfig,
    label_image,
    pseudo_label,
)
from regionprompt.regionclip.region_encoder import embed_concepts
from regionprompt.vl.clip_model import build_clip
from regionprompt.vl.concept_pool import ConceptPool
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache

CONFIG = PseudoLabelConfig(templates="single", max_proposals=12, top_k=3, shard_images=3)
TENSORS = ("image_index", "boxes", "concept", "topk_index", "topk_prob", "objectness")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 10-scene pretrain cache at 64 px, a random RN-tiny teacher and a pool holding every concept in it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pl")
    cache = build_scene_cache(SceneCacheSpec("pretrain", 0, 10, 64), root / "cache", workers=1)
    torch.manual_seed(0)
    build_clip("RN-tiny").save(root / "teacher")
    teacher = load_checkpoint(root / "teacher")
    concepts = load_concepts()
    present = sorted({o["concept_id"] for r in cache.records for o in r["objects"]})
    names = [concepts.by_id(i).name for i in present] + list(concepts.names[:20])
    names = list(dict.fromkeys(names))
    source = SceneBoxProposals(cache, jittered_per_object=1, random_boxes=6)
    return root, cache, teacher, names, source


def _run(world, out, config=CONFIG, **kwargs):
    _, cache, teacher, names, source = world
    return pseudo_label(teacher, source, cache, names, out, config, proposal_id=source.identity, **kwargs)


@pytest.fixture(scope="module")
def full_run(world):
    out = world[0] / "full"
    _run(world, out)
    return out


def _same_contents(a, b):
    la, lb = PseudoLabels.open(a), PseudoLabels.open(b)
    assert len(la) == len(lb) and la.pool_names == lb.pool_names
    for name in TENSORS:
        assert la.tensors[name].dtype == lb.tensors[name].dtype
        assert torch.equal(la.tensors[name], lb.tensors[name]), name


def test_round_trip_matches_direct_labelling(world, full_run):
    _, cache, teacher, names, source = world
    labels = PseudoLabels.open(full_run)
    assert len(labels) == 10 and labels.pool_names == tuple(names)
    assert [e["first_image"] for e in labels.entries] == [0, 3, 6, 9]  # 3 images per shard
    assert labels.num_regions == sum(e["regions"] for e in labels.entries) > 0
    assert labels.meta["identity"]["pool_hash"] == pool_hash(names)
    concept_emb = embed_concepts(teacher, names, "single")
    for index in (0, 4, 9):
        direct, scored = label_image(teacher, source, cache.image(index), concept_emb, CONFIG)
        stored = labels.regions(index)
        assert 0 < len(stored.boxes) <= scored <= CONFIG.max_proposals
        assert torch.equal(stored.boxes, direct["boxes"]) and torch.equal(stored.topk_prob, direct["topk_prob"])
        assert torch.equal(stored.concept, stored.topk_index[:, 0])
        assert (stored.topk_prob[:, 0].float() >= CONFIG.threshold - 1e-3).all()
        assert (stored.topk_prob[:, :-1] >= stored.topk_prob[:, 1:]).all()
        assert (stored.boxes >= 0).all() and (stored.boxes <= 64).all()
        assert torch.equal(labels.objectness(index), direct["objectness"])
    with pytest.raises(IndexError):
        labels.regions(10)


def test_max_images_then_continue_equals_one_run(world, full_run, tmp_path):
    first = _run(world, tmp_path / "resumed", max_images=4)
    assert (first.first_image, first.stop_image) == (0, 4) and first.proposals > 0
    assert len(PseudoLabels.open(tmp_path / "resumed")) == 4
    second = _run(world, tmp_path / "resumed")
    assert (second.first_image, second.stop_image) == (4, 10)
    assert _run(world, tmp_path / "resumed").images == 0  # nothing left to do
    _same_contents(full_run, tmp_path / "resumed")


class _KilledAt:
    """A proposal source that dies (like Ctrl-C) on its n-th call."""

    def __init__(self, source, n):
        self.source, self.n, self.calls = source, n, 0

    def propose(self, images, *, max_proposals=300):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.source.propose(images, max_proposals=max_proposals)


def test_killed_runs_resume_without_loss_or_duplicates(world, full_run, tmp_path):
    _, cache, teacher, names, source = world
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(teacher, _KilledAt(source, 8), cache, names, out, CONFIG, proposal_id=source.identity)
    assert len(PseudoLabels.open(out)) == 6  # two whole shards; the third was lost mid-way and is redone
    _run(world, out)
    _same_contents(full_run, out)

    # Killed after a shard file was written but before its manifest line was complete.
    cut = tmp_path / "cut"
    shutil.copytree(full_run, cut)
    lines = (cut / MANIFEST_FILE).read_text().splitlines(keepends=True)
    (cut / MANIFEST_FILE).write_text("".join(lines[:2]) + lines[2][:25])
    assert len(PseudoLabels.open(cut)) == 6 and (cut / "shards" / "shard_00003.safetensors").exists()
    run = _run(world, cut)
    assert (run.first_image, run.stop_image) == (6, 10)
    _same_contents(full_run, cut)
    assert len((cut / MANIFEST_FILE).read_text().splitlines()) == 4


def test_changed_settings_are_refused(world, full_run, tmp_path):
    _, cache, teacher, names, source = world
    with pytest.raises(PseudoLabelError, match="threshold"):
        _run(world, full_run, PseudoLabelConfig(**{**CONFIG.__dict__, "threshold": 0.2}))
    with pytest.raises(PseudoLabelError, match="pool_hash"):
        pseudo_label(teacher, source, cache, names[:-1], full_run, CONFIG, proposal_id=source.identity)
    torch.manual_seed(1)
    other = build_clip("RN-tiny")
    with pytest.raises(PseudoLabelError, match="teacher_hash"):
        pseudo_label(other, source, cache, names, full_run, CONFIG, proposal_id=source.identity)
    with pytest.raises(PseudoLabelError, match="proposals"):
        pseudo_label(teacher, source, cache, names, full_run, CONFIG, proposal_id="rpn:abc")
    # A damaged shard is caught by its checksum.
    damaged = tmp_path / "damaged"
    shutil.copytree(full_run, damaged)
    shard = damaged / "shards" / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PseudoLabelError, match="sha256"):
        PseudoLabels.open(damaged)


def test_oracle_proposals_hold_the_true_boxes(world):
    _, cache, _, _, source = world
    objects = cache.records[2]["objects"]
    found = source.propose(torch.from_numpy(cache.image(2).copy()).permute(2, 0, 1)[None].float() / 255)[0]
    assert len(found) == 2 * len(objects) + 6
    assert (found.objectness[:-1] >= found.objectness[1:]).all()
    true = torch.tensor([o["box"] for o in objects])
    assert torch.allclose(found.boxes[: len(objects)].sort(dim=0).values, true.clamp(0, 64).sort(dim=0).values, atol=1e-4)
    with pytest.raises(Exception, match="oracle proposals"):
        source.propose(torch.zeros(1, 3, 64, 64))


def test_match_labels_known_cases():
    true_boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    true_ids = torch.tensor([5, 7])
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [0, 0, 30, 30]])
    ids = torch.tensor([5, 6, -1, 5, 5])
    m = match_labels(boxes, ids, true_boxes, true_ids, group_of={5: "dog", 6: "dog"})
    assert m.correct.tolist() == [True, False, False, False, False]
    assert m.same_group.tolist() == [True, True, False, False, False]
    assert m.localised.tolist() == [True, True, True, False, False]
    assert m.recalled.tolist() == [True, False]
    empty = match_labels(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), true_boxes, true_ids)
    assert empty.recalled.tolist() == [False, False]


def test_precision_report_on_perfect_and_real_labels(world, full_run, tmp_path):
    _, cache, _, _, _ = world
    concepts = load_concepts()
    names = list(concepts.names)
    # Perfect labels: every true object labelled with its own concept, plus one wrong label in image 0.
    writer = PseudoLabelWriter(tmp_path / "perfect", {"pool_hash": pool_hash(names), "top_k": 1}, {}, names)
    objects = [(i, o) for i in range(4) for o in cache.records[i]["objects"]]
    concept = torch.tensor([0] + [names.index(concepts.by_id(o["concept_id"]).name) for _, o in objects])
    tensors = {"image_index": torch.tensor([0] + [i for i, _ in objects]),
               "boxes": torch.tensor([[0.0, 0, 3, 3]] + [o["box"] for _, o in objects]),
               "concept": concept, "topk_index": concept[:, None], "topk_prob": torch.ones(len(concept), 1),
               "objectness": torch.ones(len(concept))}
    writer.append(0, 4, tensors)
    report = precision_report(PseudoLabels.open(tmp_path / "perfect"), cache)
    assert report.overall.labels == len(objects) + 1 and report.overall.correct == len(objects)
    assert report.overall.recall == 1.0 and report.unmapped == 0
    assert sum(s.true_objects for s in report.by_split.values()) == len(objects)
    assert report.by_threshold[0.9] == (len(objects) + 1, pytest.approx(len(objects) / (len(objects) + 1)))

    labels = PseudoLabels.open(full_run)
    real = precision_report(labels, cache)
    assert real.overall.labels == labels.num_regions
    assert real.overall.true_objects == sum(len(r["objects"]) for r in cache.records)
    assert 0.0 <= real.overall.precision <= 1.0 and real.localised >= real.overall.correct
    assert pool_concept_ids(["dog", "no such thing"])[1] == -1


def test_cli_labels_reports_and_refuses_other_settings(world, tmp_path, capsys):
    root, cache, _, names, _ = world
    ConceptPool(tuple(names), tuple(1 for _ in names), "test", "test", 1).save(tmp_path / "pool.json")
    args = ["pseudo-label", "--teacher", str(root / "teacher"), "--oracle-proposals", "--cache", str(cache.directory),
            "--pool", str(tmp_path / "pool.json"), "--out", str(tmp_path / "out"), "--templates", "single",
            "--max-proposals", "12", "--max-images", "4", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "regions/s" in out and "| all |" in out
    report = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert report["images"] == 4
    assert main([*args, "--threshold", "0.5"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main([*args[:3], "--rpn", str(tmp_path / "missing"), *args[4:]]) == 2


def test_caption_vocabulary_labels_only_mentioned_concepts(world, tmp_path):
    """``vocabulary="caption"``: every label is a concept the image's captions mention, and each mentioned
    concept labels exactly ``regions_per_concept`` proposals (threshold 0, enough proposals)."""
    from regionprompt.regionclip.pseudo_labels import CaptionVocabulary

    cache, names = world[1], world[3]
    vocabulary = CaptionVocabulary(names)
    assert vocabulary(["A photo of nothing at all."]).numel() == 0
    config = PseudoLabelConfig(templates="single", max_proposals=12, top_k=3, shard_images=4, vocabulary="caption",
                               regions_per_concept=2, threshold=0.0)
    _run(world, tmp_path / "caption", config)
    labels = PseudoLabels.open(tmp_path / "caption")
    assert len(labels) == 10 and labels.num_regions > 0
    for index in range(10):
        mentioned = set(vocabulary(cache.records[index]["captions"]).tolist())
        region = labels.regions(index)
        got = region.concept.tolist()
        assert set(got) <= mentioned
        assert all(got.count(c) <= 2 for c in mentioned)
        assert sorted(got) == sorted(2 * list(mentioned))
    with pytest.raises(Exception, match="vocabulary"):
        PseudoLabelConfig(vocabulary="everything").validate()


def test_caption_grounding_picks_the_most_probable_region_per_concept():
    from regionprompt.regionclip.pseudo_labels import _caption_grounded

    # 3 regions x 4 pool concepts; the caption mentions concepts 1 and 3
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0], [9.0, 0.0, 0.0, 4.0], [0.0, 1.0, 0.0, 3.0]])
    config = PseudoLabelConfig(vocabulary="caption", threshold=0.5)
    keep, concept = _caption_grounded(logits, torch.tensor([1, 3]), config)
    assert keep.tolist() == [0, 1] and concept.tolist() == [1, 3]
    strict = PseudoLabelConfig(vocabulary="caption", threshold=0.99)  # p(1 | r0) = 0.993, p(3 | r1) = 0.982
    keep, concept = _caption_grounded(logits, torch.tensor([1, 3]), strict)
    assert keep.tolist() == [0] and concept.tolist() == [1]


def test_an_explicit_cpu_device_gives_the_same_labels_and_a_missing_gpu_is_refused_early(world, full_run, tmp_path):
    _run(world, tmp_path / "cpu", device="cpu")
    _same_contents(full_run, tmp_path / "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RegionPromptError, match="no CUDA GPU"):
            _run(world, tmp_path / "gpu", device="cuda")
        assert not (tmp_path / "gpu").exists()  # refused before anything was written
