"""Zero-shot RegionCLIP detection on rendered EmojiWorld scenes with a tiny random CLIP.

Expected scores are recomputed here from the formula (region embeddings, template-ensembled text
embeddings, softmax at T, sqrt(p * objectness)), independently of the detector's code path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regionprompt.concept import PromptConcept
from regionprompt.detect.regionclip import (
    RegionEncoder,
    ZeroShotConfig,
    ZeroShotDetector,
    box_for_point,
)
from regionprompt.detect.rpn import ProposalNetwork, RpnCard
from regionprompt.errors import BoxFormatError, PromptError, RegionPromptError
from regionprompt.eval.zero_shot import region_embeddings
from regionprompt.prompts import BoxPrompt, PointPrompt, TextPrompt, group_prompts
from regionprompt.proposals import Proposals
from regionprompt.vl.clip_model import build_clip
from regionprompt.vl.embeddings import PromptEmbedder
from regionprompt.world.concepts import load_concepts
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig

T = 0.01


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # the machine's two cores are shared; one thread avoids oversubscription
    torch.manual_seed(0)
    return build_clip("RN-tiny").eval()


@pytest.fixture(scope="module")
def scenes():
    """Two 128 px test scenes with at least three labelled objects each."""
    renderer = SceneRenderer.default(SceneConfig(size=128, min_objects=3, max_objects=5))
    found = []
    for index in range(40):
        scene = renderer.render("test", index, 5)
        if len(scene.labelled_objects) >= 3:
            found.append(scene)
        if len(found) == 2:
            return found
    raise AssertionError("no scenes with three objects")


def names_of(scene):
    concepts = load_concepts()
    return [concepts.by_id(int(i)).name for i in scene.labels()]


def gt(scene) -> torch.Tensor:
    return torch.from_numpy(scene.boxes_xyxy())


class JitteredTruth:
    """A proposal source: the scene's true boxes plus jittered copies, objectness decreasing."""

    def __init__(self, scenes, size: int) -> None:
        self.scenes = scenes
        self.input_size = size
        self.calls = 0

    def propose(self, images, *, max_proposals=300):
        generator = torch.Generator().manual_seed(self.calls)
        self.calls += 1
        out = []
        for scene, image in zip(self.scenes, images):
            assert image.shape[-1] == self.input_size
            boxes = gt(scene) * (self.input_size / scene.image.size[0])
            jitter = boxes + torch.randn(boxes.shape, generator=generator) * 3
            jitter[:, 2:] = torch.maximum(jitter[:, 2:], jitter[:, :2] + 4)
            boxes = torch.cat([boxes, jitter.clamp(0, self.input_size)])[:max_proposals]
            objectness = torch.linspace(0.95, 0.4, len(boxes))
            out.append(Proposals(boxes, objectness))
        return out


def text_embeddings(model, phrases, templates="emoji"):
    return PromptEmbedder(model.text_encoder(), templates).embed(phrases)


def test_region_encoder_matches_the_teacher_evaluation_and_batches(model, scenes):
    encoder = RegionEncoder(model)
    for scene in scenes:
        ours = encoder.embed(scene.image, gt(scene))
        reference = region_embeddings(model, scene.image, gt(scene), "roi", 128)
        assert torch.allclose(ours, reference, atol=1e-5)
    maps = encoder.feature_maps(encoder.pixels([s.image for s in scenes]))
    batched = encoder.pool(maps[1], gt(scenes[1]), scenes[1].image.size)
    assert torch.allclose(batched, encoder.embed(scenes[1].image, gt(scenes[1])), atol=1e-4)
    assert torch.allclose(batched.norm(dim=1), torch.ones(len(batched)))


def test_text_scores_follow_the_regionclip_formula(model, scenes):
    source = JitteredTruth(scenes, 96)
    config = ZeroShotConfig(background="none", nms_iou=1.0, max_detections=1000)
    detector = ZeroShotDetector(model, source, config)
    phrases = sorted(set(names_of(scenes[0]) + names_of(scenes[1])))
    results = detector.detect([s.image for s in scenes], group_prompts([TextPrompt(p) for p in phrases]), threshold=0.2)
    # The same proposals again, independently: embeddings, softmax at T, sqrt(p * objectness).
    source.calls = 0
    proposals = source.propose(torch.zeros(2, 3, 96, 96))
    text = text_embeddings(model, phrases)
    encoder = RegionEncoder(model)
    for scene, props, dets in zip(scenes, proposals, results):
        assert dets.names == tuple(phrases) and dets.image_wh == (128, 128)
        boxes = props.boxes * (128 / 96)
        p = (encoder.embed(scene.image, boxes) @ text.t() / T).softmax(dim=1)
        expected = (p * props.objectness[:, None]).sqrt()
        rows, cols = (expected >= 0.2).nonzero(as_tuple=True)
        assert len(dets) == len(rows) > 0
        want = sorted(zip(expected[rows, cols].tolist(), cols.tolist()), reverse=True)
        got = list(zip(dets.scores.tolist(), dets.labels.tolist()))
        assert [c for _, c in got] == [c for _, c in want]
        assert torch.allclose(torch.tensor([s for s, _ in got]), torch.tensor([s for s, _ in want]), atol=1e-4)
        assert (dets.scores ** 2 <= props.objectness.max() + 1e-6).all()


def test_auto_background_formula_for_text_and_visual_categories(model, scenes):
    scene = scenes[0]
    boxes = gt(scene)
    detector = ZeroShotDetector(model, None, ZeroShotConfig(background="auto", nms_iou=1.0))
    name = names_of(scene)[0]
    exemplar = BoxPrompt(tuple(boxes[1].tolist()), image=scene.image, label="thing")
    [dets] = detector.detect([scene.image], group_prompts([TextPrompt(name), exemplar]), proposals=[boxes], threshold=0)
    encoder = RegionEncoder(model)
    regions = encoder.embed(scene.image, boxes)
    whole = encoder.embed(scene.image, torch.tensor([[0.0, 0.0, 128.0, 128.0]]))[0]
    text = text_embeddings(model, [name])[0]
    background_text = text_embeddings(model, ["background"])[0]
    sims = (regions @ torch.stack([text, regions[1]]).t()).double()  # float64: exp(1 / T) overflows float32
    backgrounds = (regions @ torch.stack([background_text, whole]).t()).double()
    p = (sims / T).exp() / ((sims / T).exp().sum(dim=1, keepdim=True) + (backgrounds / T).exp())
    for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
        row = int((boxes == box).all(dim=1).nonzero()[0])
        assert score == pytest.approx(float(p[row, label].sqrt()), abs=1e-4)
    assert len(dets) == len(boxes) * 2


def test_nms_threshold_and_topk(model, scenes):
    scene = scenes[0]
    box = gt(scene)[0]
    shifted = box + torch.tensor([1.0, 1.0, 1.0, 1.0])
    boxes = torch.stack([box, shifted, *gt(scene)[1:]])
    prompts = group_prompts([TextPrompt(n) for n in names_of(scene)])
    detector = ZeroShotDetector(model, None, ZeroShotConfig(background="none"))
    [dets] = detector.detect([scene.image], prompts, proposals=[boxes], threshold=0.0)
    for label in dets.labels.unique():
        kept = dets.boxes[dets.labels == label]
        assert not ((kept == box).all(dim=1).any() and (kept == shifted).all(dim=1).any())
    loose = ZeroShotDetector(model, None, ZeroShotConfig(background="none", nms_iou=0.99))
    [all_dets] = loose.detect([scene.image], prompts, proposals=[boxes], threshold=0.0)
    assert len(all_dets) > len(dets)
    [high] = loose.detect([scene.image], prompts, proposals=[boxes], threshold=0.5)
    assert (high.scores >= 0.5).all() and len(high) <= len(all_dets)
    capped = ZeroShotDetector(model, None, ZeroShotConfig(background="none", nms_iou=0.99, max_detections=2))
    [top] = capped.detect([scene.image], prompts, proposals=[boxes], threshold=0.0)
    assert torch.equal(top.scores, all_dets.scores[:2])


def test_exemplars_average_normalised_embeddings_and_mix_with_text(model, scenes):
    detector = ZeroShotDetector(model, None)
    encoder = RegionEncoder(model)
    a, b = scenes
    box_a, box_b = gt(a)[0], gt(b)[1]
    e_a = encoder.embed(a.image, box_a[None])[0]
    e_b = encoder.embed(b.image, box_b[None])[0]
    visual = F.normalize((e_a + e_b) / 2, dim=0)
    prompts = [BoxPrompt(tuple(box_a.tolist()), image=a.image, label="x"), BoxPrompt(tuple(box_b.tolist()), image=b.image, label="x")]
    [concept] = detector.make_concepts(group_prompts(prompts))
    assert torch.allclose(concept.embedding, visual, atol=1e-5)
    assert [s["kind"] for s in concept.sources] == ["box", "box"]
    text = text_embeddings(model, ["x"])[0]
    [mixed] = detector.make_concepts(group_prompts([TextPrompt("x"), *prompts]))
    assert torch.allclose(mixed.embedding, F.normalize(text + visual, dim=0), atol=1e-5)


def test_interactive_box_equals_the_same_box_given_with_its_image(model, scenes):
    scene = scenes[0]
    box = tuple(gt(scene)[0].tolist())
    detector = ZeroShotDetector(model, None)
    [here] = detector.detect([scene.image], group_prompts([BoxPrompt(box)]), proposals=[gt(scene)], threshold=0)
    [there] = detector.detect([scene.image], group_prompts([BoxPrompt(box, image=scene.image)]),
                              proposals=[gt(scene)], threshold=0)
    assert len(here) == len(gt(scene))
    assert torch.allclose(here.scores, there.scores, atol=1e-5) and torch.equal(here.boxes, there.boxes)


def test_negative_exemplar_drops_what_is_closer_to_it(model, scenes):
    scene = scenes[0]
    boxes = gt(scene)
    positive, negative = tuple(boxes[0].tolist()), tuple(boxes[1].tolist())
    detector = ZeroShotDetector(model, None, ZeroShotConfig(background="none"))
    [plain] = detector.detect([scene.image], group_prompts([BoxPrompt(positive)]), proposals=[boxes], threshold=0)
    assert len(plain) == len(boxes)  # one category, no background: every region is "object"
    prompts = group_prompts([BoxPrompt(positive), BoxPrompt(negative, negative=True)])
    [filtered] = detector.detect([scene.image], prompts, proposals=[boxes], threshold=0)
    regions = RegionEncoder(model).embed(scene.image, boxes)
    closer_to_negative = regions @ regions[1] > regions @ regions[0]
    assert bool(closer_to_negative[1]) and not bool(closer_to_negative[0])
    kept = {tuple(b) for b in filtered.boxes.tolist()}
    assert kept == {tuple(b) for b, drop in zip(boxes.tolist(), closer_to_negative.tolist()) if not drop}


def test_text_negative_applies_to_its_category(model, scenes):
    scene = scenes[0]
    boxes = gt(scene)
    name = names_of(scene)[0]
    detector = ZeroShotDetector(model, None, ZeroShotConfig(background="none"))
    # The category's own phrase as its negative: ties are kept (strictly closer drops), a
    # different phrase drops exactly the regions closer to it.
    other = "red balloon"
    prompts = group_prompts([TextPrompt(name), TextPrompt(other, label=name, negative=True)])
    [dets] = detector.detect([scene.image], prompts, proposals=[boxes], threshold=0)
    regions = RegionEncoder(model).embed(scene.image, boxes)
    text = text_embeddings(model, [name, other])
    keep = (regions @ text[1]) <= (regions @ text[0])
    assert len(dets) == int(keep.sum())


def test_point_prompt_boxes():
    proposals = Proposals(torch.tensor([[0.0, 0, 50, 50], [10, 10, 30, 30], [0, 0, 100, 100]]), torch.tensor([0.9, 0.9, 0.5]))
    assert box_for_point((20, 20), (100, 100), proposals, 0.2).tolist() == [10, 10, 30, 30]  # smallest of the best
    assert box_for_point((80, 80), (100, 100), proposals, 0.2).tolist() == [0, 0, 100, 100]  # the only one around it
    assert box_for_point((95, 5), (100, 100), None, 0.2).tolist() == [85, 0, 100, 15]  # square, clipped


def test_point_on_searched_image_uses_the_given_box_around_it(model, scenes):
    scene = scenes[0]
    boxes = gt(scene)
    x1, y1, x2, y2 = boxes[0].tolist()
    detector = ZeroShotDetector(model, None)
    point = group_prompts([PointPrompt(((x1 + x2) / 2, (y1 + y2) / 2))])
    box = group_prompts([BoxPrompt((x1, y1, x2, y2))])
    [a] = detector.detect([scene.image], point, proposals=[boxes], threshold=0)
    [b] = detector.detect([scene.image], box, proposals=[boxes], threshold=0)
    assert torch.allclose(a.scores, b.scores)


def test_concepts_reproduce_prompt_detections_and_refuse_other_models(model, scenes):
    a, b = scenes
    detector = ZeroShotDetector(model, None, ZeroShotConfig(background="auto"))
    prompts = group_prompts([TextPrompt(names_of(a)[0]),
                             BoxPrompt(tuple(gt(a)[1].tolist()), image=a.image, label="mine"),
                             TextPrompt("blue", label="mine"),
                             BoxPrompt(tuple(gt(a)[2].tolist()), image=a.image, negative=True, label="mine")])
    concepts = detector.make_concepts(prompts)
    assert concepts[1].negatives.shape == (1, 256) and concepts[1].model_hash == detector.model_hash
    [direct] = detector.detect([b.image], prompts, proposals=[gt(b)], threshold=0.05)
    [reused] = detector.detect([b.image], concepts=concepts, proposals=[gt(b)], threshold=0.05)
    assert direct.names == reused.names
    assert torch.allclose(direct.scores, reused.scores, atol=1e-5) and torch.equal(direct.labels, reused.labels)
    foreign = PromptConcept("alien", concepts[0].embedding, model_hash="0" * 64)
    with pytest.raises(PromptError, match="made by model"):
        detector.detect([b.image], concepts=[foreign], proposals=[gt(b)])
    with pytest.raises(PromptError, match="given twice"):
        detector.detect([b.image], prompts, concepts=concepts[:1], proposals=[gt(b)])
    with pytest.raises(PromptError, match="need the image"):
        detector.make_concepts(group_prompts([BoxPrompt((1, 1, 5, 5))]))


def test_prompt_and_input_errors(model, scenes):
    scene = scenes[0]
    detector = ZeroShotDetector(model, None)
    with pytest.raises(PromptError, match="no prompt"):
        detector.detect([scene.image], [], proposals=[gt(scene)])
    with pytest.raises(PromptError, match="outside"):
        detector.detect([scene.image], group_prompts([BoxPrompt((100, 100, 200, 200))]), proposals=[gt(scene)])
    with pytest.raises(PromptError, match="outside"):
        detector.detect([scene.image], group_prompts([PointPrompt((500, 5), image=scene.image)]), proposals=[gt(scene)])
    with pytest.raises(RegionPromptError, match="no proposal network"):
        detector.detect([scene.image], group_prompts([TextPrompt("dog")]))
    with pytest.raises(BoxFormatError):
        detector.detect([scene.image], group_prompts([TextPrompt("dog")]), proposals=[[[5, 5, 2, 2]]])
    [empty] = detector.detect([scene.image], group_prompts([TextPrompt("dog")]), proposals=[torch.zeros(0, 4)])
    assert len(empty) == 0 and empty.names == ("dog",)
    with pytest.raises(ValueError, match="background"):
        ZeroShotConfig(background="sometimes")


def test_trained_rpn_layout_as_proposal_source(model, scenes):
    """The project's ProposalNetwork (random weights) plugs in; boxes come back in each image's pixels."""
    torch.manual_seed(1)
    rpn = ProposalNetwork(RpnCard(image_size=64, widths=(8, 8, 16, 16), fpn_channels=16,
                                  anchor_sizes=((8.0,), (16.0,), (32.0,), (64.0,)), aspect_ratios=(1.0,)))
    detector = ZeroShotDetector(model, rpn, ZeroShotConfig(max_proposals=40, background="none"))
    assert detector.proposal_input_size() == 64
    wide = scenes[0].image.resize((160, 96))
    [dets] = detector.detect([wide], group_prompts([TextPrompt("dog"), TextPrompt("cat")]), threshold=0.0)
    [props] = detector.propose([wide])
    assert len(props) <= 40 and 0 < len(dets) <= 80
    assert (dets.boxes[:, 0] >= 0).all() and (dets.boxes[:, 2] <= 160 + 1e-3).all() and (dets.boxes[:, 3] <= 96 + 1e-3).all()
    assert (dets.scores ** 2 <= props.objectness.max() + 1e-6).all()


def test_top_k_nms_equals_nms_on_every_candidate():
    from torchvision.ops import batched_nms

    from regionprompt.detect.postprocess import top_k_nms

    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        n = 3000
        xy = torch.rand(n, 2, generator=g) * 200
        wh = torch.rand(n, 2, generator=g) * 60 + 4
        boxes = torch.cat([xy, xy + wh], dim=1)
        scores = torch.rand(n, generator=g)
        labels = torch.randint(0, 7 if trial % 2 else 300, (n,), generator=g)
        full = batched_nms(boxes, scores, labels, 0.5)[:100]
        assert torch.equal(top_k_nms(boxes, scores, labels, 0.5, 100), full)
