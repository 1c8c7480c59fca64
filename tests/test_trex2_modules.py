"""T-Rex2 parts: shapes of every module, prompt grouping semantics, denoising layout, prompt validation."""

import pytest
import torch
import torch.nn.functional as F

from regionprompt.errors import CheckpointError, PromptError
from regionprompt.trex2 import TRex2Card, build_trex2
from regionprompt.trex2.denoising import build_denoising_queries
from regionprompt.trex2.position import (
    grid_position_embedding,
    inverse_sigmoid,
    sine_encode,
)
from regionprompt.trex2.prompt_encoder import mean_embedding
from regionprompt.trex2.structures import DetectionTarget, VisualPromptBatch
from regionprompt.trex2.visual_prompts import make_prompt_batch
from regionprompt.vl.cards import load_card

TINY = {"image_size": 64, "dim": 32, "heads": 2, "points": 2, "encoder_layers": 1, "decoder_layers": 2,
        "prompt_layers": 2, "ffn_dim": 64, "num_queries": 12}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_trex2(TRex2Card(clip=load_card("RN-tiny"), **TINY), seed=0).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_position_encodings():
    enc = sine_encode(torch.rand(3, 5, 4), 16)
    assert enc.shape == (3, 5, 64) and enc.abs().max() <= 1
    grid = grid_position_embedding(4, 6, 32)
    assert grid.shape == (24, 32) and len({tuple(r) for r in grid.round(decimals=5).tolist()}) == 24
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)


def test_encoder_shapes(model, images):
    encoded = model.encode_images(images)
    assert encoded.spatial_shapes == ((8, 8), (4, 4), (2, 2))
    assert encoded.memory.shape == (2, 84, 32) and torch.isfinite(encoded.memory).all()
    assert TRex2Card(clip=load_card("RN-tiny")).tokens() == 40 * 40 + 20 * 20 + 10 * 10
    # Other input sizes are resized to the card's.
    assert model.encode_images(torch.rand(1, 3, 50, 90)).memory.shape == (1, 84, 32)


def test_visual_prompt_encoder_groups_and_padding(model, images):
    encoded = model.encode_images(images)
    one = make_prompt_batch([(0, torch.tensor([[4.0, 4.0, 30.0, 40.0]]))], [(64, 64)] * 2)
    padded = make_prompt_batch(
        [(0, torch.tensor([[4.0, 4.0, 30.0, 40.0]])), (1, torch.tensor([[1.0, 2, 20, 20], [30, 30, 60, 50], [5, 5, 9, 9]]))],
        [(64, 64)] * 2,
    )
    alone = model.visual_prompt_embeddings(encoded, one)
    together = model.visual_prompt_embeddings(encoded, padded)
    assert alone.shape == (1, 32) and together.shape == (2, 32)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)  # padding of other groups is invisible
    points = make_prompt_batch([(1, torch.tensor([[10.0, 12.0], [64.0, 64.0]]))], [(64, 64)] * 2)  # border point
    assert model.visual_prompt_embeddings(encoded, points).shape == (1, 32)


def test_several_prompts_give_one_embedding_and_images_are_averaged(model, images):
    boxes_a = torch.tensor([[4.0, 4.0, 30.0, 40.0], [35.0, 10.0, 60.0, 30.0]])
    boxes_b = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    a = model.embed_visual_prompts(images[:1], [boxes_a])
    b = model.embed_visual_prompts(images[1:], [boxes_b])
    both = model.embed_visual_prompts(images, [boxes_a, boxes_b])
    assert a.shape == (32,)
    torch.testing.assert_close(both, F.normalize((a + b) / 2, dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_embedding(torch.stack([a, b])), both, atol=1e-5, rtol=1e-5)
    # Images of different sizes (generic prompts from other photos) are accepted.
    mixed = model.embed_visual_prompts([images[0], torch.rand(3, 40, 96)], [boxes_a, torch.tensor([[1.0, 1, 90, 39]])])
    assert mixed.shape == (32,)
    point = model.embed_visual_prompts(images[:1], [torch.tensor([[17.0, 22.0]])])
    assert point.shape == (32,) and not torch.allclose(point, a)


def test_text_prompt_embeddings(model):
    text = model.embed_texts(["dog", "red apple", "dog"])
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text[0], text[2])
    assert not torch.allclose(text[0], text[1])


def test_forward_and_detect_shapes(model, images):
    prompts = F.normalize(torch.randn(5, 32), dim=-1)
    output = model(model.encode_images(images), prompts)
    assert len(output.layers) == 2
    for stage in (*output.layers, output.encoder):
        assert stage.logits.shape == (2, 12, 5) and stage.boxes.shape == (2, 12, 4)
        assert (stage.boxes > 0).all() and (stage.boxes < 1).all()
    det = model.detect(images * 1.0, prompts)
    assert det.boxes.shape == (2, 12, 4) and det.scores.shape == (2, 12, 5)
    assert (det.boxes[..., 2:] >= det.boxes[..., :2]).all() and det.boxes.max() <= 64.001
    wide = model.detect(torch.rand(1, 3, 32, 128), prompts)  # boxes in pixels of the input, not the model size
    assert wide.boxes[..., 0::2].max() <= 128.001 and wide.boxes[..., 1::2].max() <= 32.001


def test_denoising_queries_layout_and_mask(model, images):
    targets = [
        DetectionTarget(torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]), torch.tensor([0, 2])),
        DetectionTarget(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
    ]
    dn = build_denoising_queries(targets, num_queries=12, num_columns=3, max_queries=12,
                                 generator=torch.Generator().manual_seed(0))
    layout = dn.layout
    assert (layout.groups, layout.max_objects, layout.pad) == (3, 2, 12)
    assert dn.labels.shape == (2, 12) and dn.reference.shape == (2, 12, 4)
    assert dn.valid[0].sum() == 12 and dn.valid[1].sum() == 0
    assert layout.positive_index[0].tolist() == [0, 1, 4, 5, 8, 9] and layout.positive_target[0].tolist() == [0, 1] * 3
    mask = dn.attn_mask
    assert mask.shape == (24, 24)
    assert mask[12:, :12].all() and not mask[12:, 12:].any()  # matching queries never see denoising ones
    assert not mask[:4, :4].any() and mask[:4, 4:12].all() and not mask[:12, 12:].any()
    # Positives stay near their box, negatives are pushed further away.
    gt = targets[0].boxes
    pos = (dn.reference[0, [0, 1]] - gt).abs().sum()
    neg = (dn.reference[0, [2, 3]] - gt).abs().sum()
    assert pos < neg
    output = model(model.encode_images(images), F.normalize(torch.randn(3, 32), dim=-1), dn)
    assert len(output.denoising) == 2 and output.denoising[0].logits.shape == (2, 12, 3)
    assert output.layers[-1].logits.shape == (2, 12, 3)
    assert build_denoising_queries([targets[1]], 12, 3) is None


def test_prompt_batch_validation():
    wh = [(64, 48)]
    with pytest.raises(PromptError, match="zero or negative size"):
        make_prompt_batch([(0, torch.tensor([[10.0, 10.0, 10.0, 30.0]]))], wh)
    with pytest.raises(PromptError, match="outside"):
        make_prompt_batch([(0, torch.tensor([[10.0, 10.0, 70.0, 30.0]]))], wh)
    with pytest.raises(PromptError, match="outside"):
        make_prompt_batch([(0, torch.tensor([[10.0, -5.0]]))], wh)
    with pytest.raises(PromptError, match="all"):
        make_prompt_batch([(0, torch.tensor([[1.0, 1, 5, 5]])), (0, torch.tensor([[1.0, 1]]))], wh)
    with pytest.raises(PromptError, match="no prompts"):
        make_prompt_batch([(0, torch.zeros(0, 4))], wh)
    border = make_prompt_batch([(0, torch.tensor([[64.0, 48.0], [0.0, 0.0]]))], wh)
    assert border.kind == "point" and border.coords[0].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    boxes = make_prompt_batch([(0, torch.tensor([[0.0, 0.0, 64.0, 48.0]]))], wh)
    assert boxes.coords[0, 0].tolist() == [0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="at least one"):
        VisualPromptBatch(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, dtype=torch.long))


def test_model_level_prompt_errors(model, images):
    with pytest.raises(PromptError, match="zero or negative"):
        model.embed_visual_prompts(images[:1], [torch.tensor([[5.0, 5.0, 5.0, 9.0]])])
    with pytest.raises(PromptError, match="outside"):
        model.embed_visual_prompts(images[:1], [torch.tensor([[5.0, 5.0, 90.0, 9.0]])])
    with pytest.raises(PromptError, match="no visual prompts"):
        model.embed_visual_prompts(images[:1], [torch.zeros(0, 4)])
    with pytest.raises(PromptError, match="prompt embeddings"):
        model.detect(images, torch.zeros(0, 32))
    with pytest.raises(PromptError, match="images"):
        model.detect(torch.zeros(2, 1, 64, 64), torch.zeros(1, 32))


def test_card_roundtrip_and_validation():
    card = TRex2Card(clip=load_card("RN-tiny"), **TINY)
    again = TRex2Card.from_json(card.to_json())
    assert again == card
    with pytest.raises(CheckpointError, match="multiple of 32"):
        TRex2Card(clip=load_card("RN-tiny"), image_size=100)
    with pytest.raises(CheckpointError, match="ResNet"):
        TRex2Card(clip=load_card("ViT-tiny"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        TRex2Card.from_json("{")


def test_text_side_is_frozen_and_backbone_trainable(model):
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("clip.transformer.") for n in frozen)
    assert all(not n.startswith("clip.visual.layer") for n in frozen)
    head_ids = {id(p) for p in model.head_parameters()}
    assert not head_ids & {id(p) for p in model.backbone_parameters()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.head_parameters()) + sum(p.numel() for p in model.backbone_parameters())
