"""T-Rex2 v2 training levers: paired (cross-image) batches, exemplar columns from other images,
vocabulary-wide and text negatives, appearance augmentation and bfloat16 autocast."""

import numpy as np
import pytest
import torch

from test_trex2_train import TINY as V1_TINY

from regionprompt.errors import RegionPromptError
from regionprompt.train.augment import augment_batch, outline
from regionprompt.train.trex2 import SceneBatches, TRex2Step, TRex2TrainConfig, build_model, text_table, train_trex2
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

TINY = {**V1_TINY, "num_scenes": 24}  # more scenes than the v1 tests: partners need shared concepts


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("det_cache_v2")
    return build_scene_cache(SceneCacheSpec("det-train", 0, 24, 64), path, workers=1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _step(cache, **changes):
    config = TRex2TrainConfig(steps=20, **{**TINY, **changes})
    model = build_model(config)
    batches = SceneBatches(cache, config.batch_size, config.seed, paired=config.paired_batches, augment=config.augment)
    ids = batches.concept_ids()
    return config, model, batches, TRex2Step(model, config, text_table(model, ids, None), ids)


def test_paired_batches_give_each_anchor_a_partner_sharing_a_concept(cache):
    batches = SceneBatches(cache, 4, seed=0, paired=True)
    assert batches.anchors == 2
    paired = 0
    for step in range(12):
        index = batches.indices(step)
        assert len(index) == 4 and np.array_equal(index, batches.indices(step))  # a pure function of the step
        for anchor, partner in zip(index[:2], index[2:]):
            assert anchor != partner
            mine = set(batches.targets[anchor][1].tolist())
            shareable = any(len(batches.scenes_of[c]) > 1 for c in mine)
            assert bool(mine & set(batches.targets[partner][1].tolist())) == shareable
            paired += shareable
    assert paired >= 12  # most anchors of this small cache have a partner
    # Every eligible scene is an anchor once per epoch.
    anchors = np.concatenate([batches.indices(s)[:2] for s in range(batches.per_epoch)])
    assert len(set(anchors.tolist())) == 2 * batches.per_epoch
    # Unpaired batches are unchanged: sorted slices of the epoch permutation.
    plain = SceneBatches(cache, 4, seed=0)
    assert np.array_equal(plain.indices(0), np.sort(plain.indices(0)))


def test_cross_image_columns_are_drawn_on_one_image_and_target_every_image(cache):
    config, model, batches, step = _step(cache, paired_batches=True, cross_image_prob=1.0, visual_text_negatives=5)
    batch = batches(3)
    encoded = model.encode_images(batch.images)
    prompts = step._visual_prompts(batch, encoded, "box", np.random.default_rng(0))
    present = sorted({int(c) for ids in batch.concepts for c in ids})
    # one column per concept present (cross-image: one source image each), then 5 text negatives
    assert prompts.prompts.shape == (len(present) + 5, config.dim)
    assert prompts.column_concepts[: len(present)].tolist() == present
    assert not set(prompts.column_concepts[len(present):].tolist()) & set(present)
    for target, ids in zip(prompts.targets, batch.concepts):
        assert prompts.column_concepts[target.labels].tolist() == ids.tolist()
        assert int(target.labels.max()) < len(present)  # negatives are never a target
    assert torch.allclose(prompts.prompts.norm(dim=1), torch.ones(len(prompts.prompts)), atol=1e-5)


def test_exemplar_mean_columns_average_the_images_holding_the_concept(cache):
    config, model, batches, step = _step(cache, paired_batches=True, exemplar_mean_prob=1.0)
    batch = batches(0)
    encoded = model.encode_images(batch.images)
    mean = step._visual_prompts(batch, encoded, "box", np.random.default_rng(1))
    config_each, _, _, _ = _step(cache, paired_batches=True)
    each = TRex2Step(model, config_each, step.text_table, list(step.row))._visual_prompts(
        batch, encoded, "box", np.random.default_rng(1))
    present = sorted({int(c) for ids in batch.concepts for c in ids})
    assert len(mean.prompts) == len(present) < len(each.prompts)  # the paired scenes share concepts


def test_text_iterations_can_score_the_whole_vocabulary(cache):
    config, model, batches, step = _step(cache, extra_negatives=100_000)
    prompts = step._text_prompts(batches(0), np.random.default_rng(0))
    assert sorted(prompts.column_concepts.tolist()) == batches.concept_ids()


def test_augmentation_keeps_shape_and_range_and_is_a_function_of_the_step(cache):
    images = torch.from_numpy(np.ascontiguousarray(cache.images[:4])).permute(0, 3, 1, 2).float() / 255
    a, b, c = augment_batch(images, 0, 7), augment_batch(images, 0, 7), augment_batch(images, 0, 8)
    assert a.shape == images.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, images)
    drawn = outline(images[0])
    assert drawn.shape == images[0].shape and float(drawn.max()) == 1.0  # white paper, dark edges
    assert torch.equal(drawn[0], drawn[1])  # no colour left


def test_bfloat16_autocast_losses_follow_float32(cache):
    _, _, batches, step32 = _step(cache, paired_batches=True, cross_image_prob=0.5)
    _, _, _, step16 = _step(cache, paired_batches=True, cross_image_prob=0.5, amp=True)
    step16.model.load_state_dict(step32.model.state_dict())
    for i, kind in ((0, "text"), (1, "box")):
        full, half = step32.losses(batches(i), i), step16.losses(batches(i), i)
        assert torch.isfinite(half["loss"]) and half["loss"].dtype == torch.float32
        assert abs(float(half["loss"]) - float(full["loss"])) < 0.05 * float(full["loss"]), kind


def test_every_v2_lever_together_learns(tmp_path, cache):
    config = TRex2TrainConfig(steps=150, text_warmup_steps=0, cycle="tbp", paired_batches=True, cross_image_prob=0.5,
                              exemplar_mean_prob=0.2, visual_text_negatives=8, extra_negatives=100, augment=True,
                              amp=True, **{**TINY, "num_scenes": 24})
    train_trex2(config, tmp_path, cache_dir=SceneCache(cache.directory).directory, workers=1, log_every=1)
    import json

    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in log[:15]) / 15
    last = sum(r["loss"] for r in log[-15:]) / 15
    assert last < 0.8 * first, (first, last)


def test_bad_v2_settings_are_refused():
    with pytest.raises(RegionPromptError, match="cross-image-prob"):
        TRex2TrainConfig(cross_image_prob=0.7, exemplar_mean_prob=0.5)
    with pytest.raises(RegionPromptError, match="batch size"):
        TRex2TrainConfig(paired_batches=True, batch_size=1)
    with pytest.raises(RegionPromptError, match="visual-text-negatives"):
        TRex2TrainConfig(visual_text_negatives=-1)
