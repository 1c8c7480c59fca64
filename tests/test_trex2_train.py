"""T-Rex2 training: a tiny model overfits a few rendered scenes from text and from box prompts, point
prompts train, the run resumes exactly, the saved model reloads to identical outputs, and the CLI runs."""

import json

import pytest
import torch

from regionprompt.cli import main
from regionprompt.train.trex2 import (
    SceneBatches,
    TRex2Step,
    TRex2TrainConfig,
    build_model,
    text_table,
    train_trex2,
)
from regionprompt.trex2 import TRex2
from regionprompt.world.scene_cache import SceneCacheSpec, build_scene_cache

TINY = {
    "image_size": 64, "dim": 32, "heads": 2, "points": 2, "encoder_layers": 1, "decoder_layers": 2,
    "prompt_layers": 1, "ffn_dim": 64, "num_queries": 20, "templates": "single", "num_scenes": 4, "batch_size": 4,
    "lr": 1e-3, "backbone_lr": 1e-3, "frozen_stages": 0, "warmup_steps": 5, "grad_clip": 1.0, "dn_queries": 20,
    "checkpoint_every": 1000,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("det_cache")
    build_scene_cache(SceneCacheSpec("det-train", 0, 4, 64), path, workers=1)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _assert_learns(run_dir):
    log = _log(run_dir)
    assert len(log) == 60
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert sum(r["cls"] for r in log[-10:]) / 10 < 0.5 * sum(r["cls"] for r in log[:5]) / 5
    assert sum(r["giou"] for r in log[-10:]) < sum(r["giou"] for r in log[:5]) * 2


def test_overfits_scenes_from_text_prompts(tmp_path, cache_dir):
    config = TRex2TrainConfig(steps=60, text_warmup_steps=60, **TINY)
    result = train_trex2(config, tmp_path, cache_dir=cache_dir, workers=1, log_every=1)
    assert result.finished
    _assert_learns(tmp_path)
    assert all(r["align"] == 0 for r in _log(tmp_path))


def test_overfits_scenes_from_box_prompts(tmp_path, cache_dir):
    config = TRex2TrainConfig(steps=60, text_warmup_steps=0, cycle="b", **TINY)
    train_trex2(config, tmp_path, cache_dir=cache_dir, workers=1, log_every=1)
    _assert_learns(tmp_path)
    log = _log(tmp_path)
    assert sum(r["align"] for r in log[-10:]) < sum(r["align"] for r in log[:10])  # visual embeddings align to text


def _step_losses(cache_dir, **changes):
    config = TRex2TrainConfig(steps=10, **{**TINY, **changes})
    from regionprompt.world.scene_cache import SceneCache

    model = build_model(config)
    batches = SceneBatches(SceneCache(cache_dir), config.batch_size, config.seed)
    ids = batches.concept_ids()
    return model, batches, TRex2Step(model, config, text_table(model, ids, None), ids)


def test_point_prompt_iterations_train(cache_dir):
    model, batches, step = _step_losses(cache_dir, text_warmup_steps=0, cycle="p")
    optimizer = torch.optim.AdamW(model.head_parameters() + model.backbone_parameters(), lr=1e-3)
    losses = []
    for i in range(12):
        terms = step.losses(batches(i), i)
        assert torch.isfinite(terms["loss"]) and terms["align"] > 0
        optimizer.zero_grad()
        terms["loss"].backward()
        assert model.prompt_encoder.point_proj.weight.grad.abs().sum() > 0
        assert model.prompt_encoder.box_proj.weight.grad.abs().sum() > 0  # the class token's whole-image box
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert sum(losses[-3:]) < sum(losses[:3])


def test_iteration_schedule():
    config = TRex2TrainConfig(text_warmup_steps=3, cycle="tbbp")
    kinds = [config.iteration_kind(s) for s in range(9)]
    assert kinds == ["text"] * 3 + ["text", "box", "box", "point", "text", "box"]
    with pytest.raises(Exception, match="cycle"):
        TRex2TrainConfig(cycle="tx")


def test_resume_matches_uninterrupted_run_and_saved_model_reloads(tmp_path, cache_dir):
    config = TRex2TrainConfig(steps=6, text_warmup_steps=2, cycle="bp", **TINY)
    train_trex2(config, tmp_path / "straight", cache_dir=cache_dir, workers=1)
    partial = train_trex2(config, tmp_path / "resumed", cache_dir=cache_dir, workers=1, max_steps_this_run=3)
    assert not partial.finished
    resumed = train_trex2(config, tmp_path / "resumed", cache_dir=cache_dir, workers=1)
    assert resumed.resumed_from == 3 and resumed.finished
    card = (tmp_path / "resumed" / "model" / "card.json").read_text()
    again = train_trex2(config, tmp_path / "resumed", cache_dir=cache_dir, workers=1)  # finished: nothing to do
    assert again.finished and (tmp_path / "resumed" / "model" / "card.json").read_text() == card
    a = TRex2.load(tmp_path / "straight" / "model")
    b = TRex2.load(tmp_path / "resumed" / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.card.training["recipe"]["steps"] == 6 and a.card.weights_hash

    # Saved and reloaded: identical outputs for text and visual prompts.
    from regionprompt.world.scene_cache import SceneCache

    batch = SceneBatches(SceneCache(cache_dir), 2, 0)(0)
    box = [torch.from_numpy(batch.boxes[0][:1])]
    prompts = torch.cat([a.embed_texts(["dog"]), a.embed_visual_prompts(batch.images[:1], box)[None]])
    before = a.detect(batch.images, prompts)
    a.save(tmp_path / "again")
    again = TRex2.load(tmp_path / "again")
    prompts_again = torch.cat([again.embed_texts(["dog"]), again.embed_visual_prompts(batch.images[:1], box)[None]])
    after = again.detect(batch.images, prompts_again)
    assert torch.equal(prompts, prompts_again)
    assert torch.equal(before.boxes, after.boxes) and torch.equal(before.scores, after.scores)


def test_load_refuses_modified_weights(tmp_path, cache_dir):
    from regionprompt.errors import CheckpointError

    model, _, _ = _step_losses(cache_dir)
    model.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    card["weights_hash"] = "0" * 64
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="hash"):
        TRex2.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a T-Rex2 model folder"):
        TRex2.load(tmp_path)


def test_cli_trains_a_detector(tmp_path, cache_dir, capsys):
    flags = {k: v for k, v in TINY.items()}
    argv = ["train", "detector", "--arch", "trex2", "--out", str(tmp_path / "run"), "--cache", str(cache_dir),
            "--no-text-cache", "--threads", "1", "--steps", "2", "--text-warmup-steps", "1", "--cycle", "b"]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "trained 2 steps (finished)" in capsys.readouterr().out
    assert TRex2.load(tmp_path / "run" / "model").card.image_size == 64
    if not torch.cuda.is_available():  # same rule as every training command: no silent fallback to the CPU
        assert main([*argv[:5], str(tmp_path / "gpu"), *argv[6:], "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["train", "detector", "--arch", "trex2", "--out", str(tmp_path / "bad"), "--cycle", "xyz"]) == 2


def test_init_starts_from_a_saved_detector_and_refuses_another_architecture(tmp_path, cache_dir):
    from regionprompt.errors import RegionPromptError

    config = TRex2TrainConfig(steps=3, text_warmup_steps=1, cycle="b", **TINY)
    train_trex2(config, tmp_path / "first", cache_dir=cache_dir, workers=1)
    saved = TRex2.load(tmp_path / "first" / "model").state_dict()
    fresh = build_model(TRex2TrainConfig(**{**TINY, "seed": 7})).state_dict()
    started = build_model(TRex2TrainConfig(**{**TINY, "seed": 7}), init=tmp_path / "first" / "model").state_dict()
    assert all(torch.equal(saved[k], started[k]) for k in saved)
    assert not all(torch.equal(saved[k], fresh[k]) for k in saved)
    with pytest.raises(RegionPromptError, match="dim 32 \\(recipe 48\\)"):
        build_model(TRex2TrainConfig(**{**TINY, "dim": 48}), init=tmp_path / "first" / "model")
