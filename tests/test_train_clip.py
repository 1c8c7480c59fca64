"""CLIP pretraining of the teacher: a tiny run learns, resumes exactly, and saves a loadable model."""

import json

import pytest
import torch

from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.train.clip_pretrain import ClipPretrainConfig, train_clip

TINY = dict(card="RN-tiny", text="clip", image_size=64, num_scenes=16, batch_size=8, warmup_steps=2, lr=3e-3, checkpoint_every=5,
            concept_min_count=2, concept_weight=0.3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scene_cache")


def _losses(run_dir, key="clip_loss"):
    return [json.loads(line)[key] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_tiny_run_overfits_its_captions(tmp_path, cache_dir):
    torch.set_num_threads(2)
    result = train_clip(ClipPretrainConfig(steps=60, **TINY), tmp_path, cache_dir=cache_dir, workers=1)
    assert result.finished
    losses = _losses(tmp_path)  # one entry per 10 steps
    chance = torch.log(torch.tensor(8.0)).item()  # a batch of 8 pairs, nothing learnt
    assert losses[0] > 0.8 * chance
    assert sum(losses[-2:]) / 2 < 0.85 * chance, losses
    concept = _losses(tmp_path, "concept_loss")  # caption nouns vs image: learnt too
    assert sum(concept[-2:]) / 2 < 0.6 * concept[0], concept
    pool = json.loads((tmp_path / "concept_pool.json").read_text())["concepts"]
    assert len(pool) >= 2 and all(c["count"] >= 2 for c in pool)
    model = load_checkpoint(tmp_path / "model")
    assert model.card.training["recipe"]["steps"] == 60
    assert model.card.weights_hash


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, cache_dir):
    config = ClipPretrainConfig(steps=8, **TINY)
    train_clip(config, tmp_path / "straight", cache_dir=cache_dir, workers=1)
    partial = train_clip(config, tmp_path / "resumed", cache_dir=cache_dir, workers=1, max_steps_this_run=5)
    assert not partial.finished and not (tmp_path / "resumed" / "model").exists()
    resumed = train_clip(config, tmp_path / "resumed", cache_dir=cache_dir, workers=1)
    assert resumed.resumed_from == 5 and resumed.finished
    a = load_checkpoint(tmp_path / "straight" / "model").state_dict()
    b = load_checkpoint(tmp_path / "resumed" / "model").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_clip_without_concepts_or_amp_still_learns(tmp_path, cache_dir):
    config = ClipPretrainConfig(steps=30, **{**TINY, "concept_weight": 0.0, "amp": False})
    train_clip(config, tmp_path, cache_dir=cache_dir, workers=1)
    losses = _losses(tmp_path, "loss")
    assert "concept_loss" not in (tmp_path / "train_log.jsonl").read_text()
    assert losses[-1] < losses[0], losses
    assert not (tmp_path / "concept_pool.json").exists()
