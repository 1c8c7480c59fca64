"""The caption term of the RegionCLIP transfer (``--caption-weight``): iconic image-caption pairs teach the
region encoder the phrases their captions mention. Its targets are exactly those phrases, its batches are
functions of the step, the loss drops when overfitting a few images, a resumed run equals an
uninterrupted one, and bad settings are refused."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from regionprompt.cli import main
from regionprompt.detect.rpn import ProposalNetwork, RpnCard
from regionprompt.errors import RegionPromptError
from regionprompt.train.caption_regions import load_caption_images
from regionprompt.train.ov_transfer import RegionClipTransferConfig, train_regionclip_detector
from regionprompt.vl.clip_model import build_clip
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

SCENE_SIZE = 96
CAPTION_SIZE = 64
# One CPU thread: 64 px inputs, one-template text embeddings, a pool of every phrase seen once.
TINY = {
    "scene_size": SCENE_SIZE, "num_scenes": 4, "batch_size": 2, "image_size": 64, "rois_per_image": 8,
    "rpn_proposals": 20, "templates": "single", "lr": 3e-3, "background_lr": 3e-3, "warmup_steps": 3,
    "flip": 0.0, "checkpoint_every": 1000, "caption_weight": 1.0, "caption_images": 6,
    "caption_size": CAPTION_SIZE, "caption_batch": 3, "caption_min_count": 1,
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random RN-tiny CLIP, a narrow random RPN, a det-train cache and an iconic pretrain cache."""
    root = tmp_path_factory.mktemp("captions")
    torch.manual_seed(0)
    build_clip("RN-tiny").save(root / "clip")
    ProposalNetwork(RpnCard(image_size=SCENE_SIZE, widths=(8, 8, 8, 8), fpn_channels=8,
                            anchor_sizes=((12.0,), (24.0,), (48.0,), (96.0,)))).save(root / "rpn")
    build_scene_cache(SceneCacheSpec("det-train", 0, 4, SCENE_SIZE), root / "det", workers=1)
    build_scene_cache(SceneCacheSpec("pretrain", 0, 6, CAPTION_SIZE, layout="iconic"), root / "iconic", workers=1)
    return root


def _kwargs(root):
    return {"clip": root / "clip", "rpn": root / "rpn", "cache_dir": root / "det", "caption_cache_dir": root / "iconic",
            "workers": 1}


def test_targets_are_the_phrases_each_caption_names(setup, tmp_path):
    cache = SceneCache(setup / "iconic")
    clip = build_clip("RN-tiny")
    captions = load_caption_images(cache, clip, templates="single", min_count=1, pool_path=tmp_path / "pool.json",
                                   text_cache=None)
    assert captions.embeddings.shape == (len(captions.names), clip.embed_dim)
    assert torch.allclose(captions.embeddings.norm(dim=-1), torch.ones(len(captions.names)), atol=1e-5)
    batch = captions.batch(0, 3, seed=0)
    again = captions.batch(0, 3, seed=0)
    assert torch.equal(batch.images, again.images) and torch.equal(batch.targets, again.targets)
    assert batch.images.shape == (3, 3, CAPTION_SIZE, CAPTION_SIZE)
    assert torch.allclose(batch.targets.sum(dim=1), torch.ones(3))
    # Each row's positives are phrases that occur in that image's captions (the pool is parsed from them).
    by_pixels = {cache.images[i].tobytes(): i for i in range(len(cache))}
    for image, row in zip(batch.images, batch.targets):
        index = by_pixels[(image.permute(1, 2, 0) * 255).round().byte().numpy().tobytes()]
        text = " ".join(cache.records[index]["captions"]).lower().replace(" ", "")
        named = [captions.names[j] for j in row.nonzero().flatten().tolist()]
        assert named and all(name.replace(" ", "") in text for name in named)
    # Augmentation changes the drawings, not the targets.
    augmented = captions.batch(0, 3, seed=0, augment=True)
    assert torch.equal(augmented.targets, batch.targets) and not torch.equal(augmented.images, batch.images)


def test_caption_loss_drops_when_overfitting(setup, tmp_path):
    config = RegionClipTransferConfig(steps=40, **TINY)
    result = train_regionclip_detector(config, tmp_path / "run", log_every=1, **_kwargs(setup))
    assert result.finished
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    first = np.mean([r["caption_loss"] for r in log[:5]])
    last = np.mean([r["caption_loss"] for r in log[-8:]])
    print({"caption_loss": (round(first, 3), round(last, 3))})
    assert last < 0.6 * first
    assert all(np.isfinite(r["loss"]) for r in log)
    card = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert "image-caption pairs" in json.dumps(card)


def test_resume_with_captions_and_augmentation_matches_an_uninterrupted_run(setup, tmp_path):
    config = RegionClipTransferConfig(steps=4, augment=True, **TINY)
    train_regionclip_detector(config, tmp_path / "straight", **_kwargs(setup))
    train_regionclip_detector(config, tmp_path / "resumed", max_steps_this_run=2, **_kwargs(setup))
    resumed = train_regionclip_detector(config, tmp_path / "resumed", **_kwargs(setup))
    assert resumed.resumed_from == 2 and resumed.finished
    a = load_file(str(tmp_path / "straight" / "model" / "clip" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "clip" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_caption_settings_are_refused(setup, tmp_path, capsys):
    with pytest.raises(RegionPromptError, match="caption_weight"):
        RegionClipTransferConfig(caption_weight=-1.0)
    with pytest.raises(RegionPromptError, match="caption_size"):
        RegionClipTransferConfig(caption_size=8)
    code = main(["train", "detector", "--arch", "regionclip", "--clip", str(setup / "clip"), "--rpn",
                 str(setup / "rpn"), "--out", str(tmp_path / "x"), "--caption-weight", "-2"])
    assert code == 2 and "caption_weight" in capsys.readouterr().err
