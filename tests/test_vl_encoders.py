"""Model cards, the image tower as a feature extractor, region pooling and the CLIP text tower."""

from __future__ import annotations

import json

import pytest
import torch
from open_clip.model import CLIP

from regionprompt.errors import BoxFormatError, CheckpointError, PromptError
from regionprompt.vl.cards import ModelCard, ModelCardError, available_cards, load_card
from regionprompt.vl.clip_model import ClipTextEncoder, RegionPromptCLIP, build_clip
from regionprompt.vl.text import TextEncoder


@pytest.fixture(scope="module")
def rn_tiny() -> RegionPromptCLIP:
    torch.manual_seed(1)
    return build_clip("RN-tiny").eval()


@pytest.fixture(scope="module")
def vit_tiny() -> RegionPromptCLIP:
    torch.manual_seed(2)
    return build_clip("ViT-tiny").eval()


# ---- cards -------------------------------------------------------------------------------------


def test_shipped_cards_load_and_round_trip_through_json() -> None:
    names = available_cards()
    assert {"RN50", "ViT-B-32", "RN-tiny", "ViT-tiny"} <= set(names)
    for name in names:
        card = load_card(name)
        assert card.name == name
        again = ModelCard.from_json(card.to_json())
        assert again == card
    rn50 = load_card("RN50")
    assert rn50.vision.kind == "resnet" and rn50.vision.layers == (3, 4, 6, 3) and rn50.vision.heads == 32
    assert load_card("ViT-B-32").vision.kind == "vit" and load_card("ViT-B-32").vision.heads == 12


def test_card_keeps_training_and_metrics_dicts(tmp_path) -> None:
    card = load_card("RN-tiny").with_updates(training={"epochs": 3}, metrics={"recall@1": 0.5})
    card.save(tmp_path / "card.json")
    loaded = load_card(tmp_path / "card.json")
    assert loaded.training == {"epochs": 3} and loaded.metrics == {"recall@1": 0.5}
    assert loaded.same_architecture(load_card("RN-tiny"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vision": {"image_size": 100, "width": 32, "layers": [1, 1, 1, 1]}}, "multiple of 32"),
        ({"vision": {"image_size": 128, "width": 192, "layers": 6, "patch_size": 15}}, "patch_size"),
        ({"text": {"kind": "bert"}}, "text.kind"),
        ({"embed_dim": "wide"}, "not a valid model card"),
    ],
)
def test_invalid_cards_raise_clear_errors(change, message) -> None:
    data = load_card("RN-tiny").to_dict() | change
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_dict(data)


def test_unknown_card_name_and_bad_json(tmp_path) -> None:
    with pytest.raises(ModelCardError, match="unknown model card 'RN-huge'"):
        load_card("RN-huge")
    bad = tmp_path / "card.json"
    bad.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_card(bad)


@pytest.mark.parametrize("name", ["RN-tiny", "ViT-tiny"])
def test_same_outputs_as_open_clip_model_of_the_card(name) -> None:
    """Our module tree has open_clip's exact keys, and the forward passes agree."""
    torch.manual_seed(3)
    card = load_card(name).with_updates(quick_gelu=True)
    ours = build_clip(card).eval()
    reference = CLIP(**card.to_open_clip_config()).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    images = torch.rand(2, 3, 128, 128)
    texts = ["a dog", "two red apples on a wooden table"]
    tokens = ours.tokenize(texts)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_image(images), reference.encode_image(ours.visual.normalize(images), normalize=True)
        )
        torch.testing.assert_close(ours.encode_tokens(tokens), reference.encode_text(tokens, normalize=True))


# ---- image features ----------------------------------------------------------------------------


def test_resnet_feature_maps_have_documented_shapes_and_strides(rn_tiny) -> None:
    visual = rn_tiny.visual
    images = torch.rand(2, 3, 96, 160)  # non-square, not the card's size
    with torch.no_grad():
        feats = visual.features(visual.normalize(images))
    assert list(feats) == ["stem", "res2", "res3", "res4", "res5"]
    assert visual.feature_strides == {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
    for name, fmap in feats.items():
        stride = visual.feature_strides[name]
        assert tuple(fmap.shape) == (2, visual.feature_channels[name], 96 // stride, 160 // stride), name
    assert visual.feature_channels["res5"] == 32 * load_card("RN-tiny").vision.width
    with torch.no_grad():
        partial = visual.features(visual.normalize(images), stop_at="res4")
    assert list(partial) == ["stem", "res2", "res3", "res4"]
    torch.testing.assert_close(partial["res4"], feats["res4"])


def test_encode_image_any_resolution_normalised(rn_tiny, vit_tiny) -> None:
    for model in (rn_tiny, vit_tiny):
        with torch.no_grad():
            emb = model.encode_image(torch.rand(3, 3, 160, 96))
        assert emb.shape == (3, model.embed_dim)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_normalize_uses_clip_statistics(rn_tiny) -> None:
    card = rn_tiny.card
    images = torch.ones(1, 3, 4, 4) * 0.5
    out = rn_tiny.visual.normalize(images)
    expected = (0.5 - torch.tensor(card.image_mean)) / torch.tensor(card.image_std)
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_whole_image_box_on_native_grid_equals_whole_image_embedding(rn_tiny) -> None:
    """RoIAlign(aligned=True) of a whole-image box at the res4 grid samples exactly the cell centres."""
    visual = rn_tiny.visual
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        whole, feats = visual.forward_with_features(visual.normalize(images))
        boxes = [torch.tensor([[0.0, 0.0, 128.0, 128.0]]), torch.tensor([[0.0, 0.0, 128.0, 128.0]])]
        grid = feats["res4"].shape[-1]
        regions = visual.pool_regions(feats["res4"], boxes, output_size=grid)
        regions14 = visual.pool_regions(feats["res4"], boxes)  # default 14x14 RoIs: resized pos. embedding
    torch.testing.assert_close(regions, whole, atol=1e-4, rtol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(regions14, whole)
    assert (cosine > 0.9).all(), cosine


def test_pool_regions_order_counts_and_independence(rn_tiny) -> None:
    visual = rn_tiny.visual
    images = torch.rand(2, 3, 128, 128)
    boxes = [torch.tensor([[10.0, 10.0, 60.0, 70.0], [0.0, 0.0, 30.0, 30.0], [64.0, 64.0, 128.0, 128.0]]), torch.zeros(0, 4)]
    with torch.no_grad():
        feats = visual.features(visual.normalize(images), stop_at="res4")
        regions = visual.pool_regions(feats["res4"], boxes)
        single = visual.pool_regions(feats["res4"][:1], [boxes[0][1:2]])
        # Changing the second image must not change regions of the first.
        other = images.clone()
        other[1] = torch.rand(3, 128, 128)
        regions_other = visual.pool_regions(visual.features(visual.normalize(other), stop_at="res4")["res4"], boxes)
    assert regions.shape == (3, rn_tiny.embed_dim)
    torch.testing.assert_close(regions[1:2], single)
    torch.testing.assert_close(regions, regions_other)
    assert not torch.allclose(regions[0], regions[2])
    empty = visual.pool_regions(feats["res4"], [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert empty.shape == (0, rn_tiny.embed_dim)


def test_pool_regions_rejects_bad_boxes(rn_tiny) -> None:
    res4 = torch.zeros(2, 512, 8, 8)
    with pytest.raises(BoxFormatError, match="boxes for 1 images but features for 2"):
        rn_tiny.visual.pool_regions(res4, [torch.zeros(1, 4)])
    with pytest.raises(BoxFormatError, match=r"\(K, 4\)"):
        rn_tiny.visual.pool_regions(res4, [torch.zeros(1, 5), torch.zeros(0, 4)])
    with pytest.raises(BoxFormatError, match="NaN"):
        rn_tiny.visual.pool_regions(res4, [torch.tensor([[0.0, 0.0, float("nan"), 4.0]]), torch.zeros(0, 4)])


def test_vit_patch_features_and_region_pooling(vit_tiny) -> None:
    visual = vit_tiny.visual
    images = torch.rand(2, 3, 128, 192)
    with torch.no_grad():
        pooled, feats = visual.forward_with_features(visual.normalize(images))
        boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([[32.0, 16.0, 192.0, 128.0], [5.0, 5.0, 20.0, 20.0]])]
        regions = visual.pool_regions(feats["patch"], boxes)
    assert feats["patch"].shape == (2, 192, 128 // 16, 192 // 16)
    assert visual.feature_strides == {"patch": 16}
    torch.testing.assert_close(pooled, visual(visual.normalize(images)))
    assert regions.shape == (3, vit_tiny.embed_dim) and torch.isfinite(regions).all()


def test_features_are_differentiable_for_training() -> None:
    torch.manual_seed(4)
    model = build_clip("RN-tiny").train()
    images = torch.rand(2, 3, 64, 64)
    img, txt, scale = model(images, ["a cat", "a dog"])
    logits = scale * img @ txt.T
    torch.nn.functional.cross_entropy(logits, torch.arange(2)).backward()
    assert model.visual.conv1.weight.grad is not None and model.token_embedding.weight.grad is not None
    assert model.logit_scale.grad is not None


# ---- text --------------------------------------------------------------------------------------


def test_clip_text_encoder_implements_protocol(rn_tiny) -> None:
    encoder = rn_tiny.text_encoder()
    assert isinstance(encoder, ClipTextEncoder) and isinstance(encoder, TextEncoder)
    texts = ["a photo of a dog.", "a photo of a cat.", "an apple", "a photo of a dog."]
    rn_tiny.train()
    out = encoder.encode_text(texts)
    assert rn_tiny.training  # mode restored
    rn_tiny.eval()
    assert out.shape == (4, encoder.embed_dim) and out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out[0], out[3])
    assert not torch.allclose(out[0], out[1])
    # Batching and trimming of padding do not change results.
    small = ClipTextEncoder(rn_tiny, batch_size=1).encode_text(texts[:2])
    torch.testing.assert_close(small, out[:2], atol=1e-5, rtol=1e-5)
    assert encoder.encode_text([]).shape == (0, encoder.embed_dim)
    with pytest.raises(PromptError):
        encoder.encode_text("a dog")


def test_long_texts_are_truncated_to_context_length(rn_tiny) -> None:
    tokens = rn_tiny.tokenize(["word " * 200])
    assert tokens.shape == (1, rn_tiny.card.text.context_length)
    assert rn_tiny.text_encoder().encode_text(["word " * 200]).shape == (1, rn_tiny.embed_dim)


def test_text_weights_hash_tracks_text_weights_only() -> None:
    torch.manual_seed(5)
    model = build_clip("RN-tiny")
    encoder = model.text_encoder()
    first = encoder.weights_hash()
    assert len(first) == 64 and encoder.weights_hash() == first
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)  # image weights do not define text embeddings
    assert encoder.weights_hash() == first
    with torch.no_grad():
        model.ln_final.bias.add_(0.01)
    assert encoder.weights_hash() != first
    torch.manual_seed(5)
    assert build_clip("RN-tiny").text_encoder().weights_hash() == first  # deterministic across instances


# ---- own format --------------------------------------------------------------------------------


def test_save_and_load_directory_round_trip(tmp_path, vit_tiny) -> None:
    card = vit_tiny.save(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "model" / "card.json").read_text())
    assert saved["weights_hash"] == card.weights_hash == vit_tiny.weights_hash()
    loaded = RegionPromptCLIP.load(tmp_path / "model")
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), vit_tiny.encode_image(images))
    torch.testing.assert_close(
        loaded.text_encoder().encode_text(["a red car"]), vit_tiny.text_encoder().encode_text(["a red car"])
    )
    assert loaded.text_encoder().weights_hash() == vit_tiny.text_encoder().weights_hash()


def test_modified_weights_file_fails_hash_check(tmp_path, rn_tiny) -> None:
    from safetensors.torch import load_file, save_file

    rn_tiny.save(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state["logit_scale"] = state["logit_scale"] + 1
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="do not match the hash"):
        RegionPromptCLIP.load(tmp_path / "m")


def test_locked_text_card_builds_trains_and_round_trips(tmp_path) -> None:
    torch.manual_seed(6)
    model = build_clip("RN-tiny-minilm")
    assert model.card.text.kind == "minilm"
    assert not any(k.startswith("text.") and not k.startswith("text.projection") for k in model.state_dict())
    img, txt, scale = model(torch.rand(2, 3, 64, 64), ["a cat", "a dog"])
    (scale * img @ txt.T).sum().backward()
    assert model.text.projection.weight.grad is not None
    with pytest.raises(TypeError, match="minilm text tower"):
        model.tokenize(["a cat"])
    model.save(tmp_path / "lt")
    loaded = RegionPromptCLIP.load(tmp_path / "lt")
    texts = ["a kitten", "a red car"]
    torch.testing.assert_close(loaded.text_encoder().encode_text(texts), model.text_encoder().encode_text(texts))
    assert loaded.text_encoder().weights_hash() == model.text_encoder().weights_hash()
