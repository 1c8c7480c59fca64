"""EmojiWorld scene geometry and labelling, on synthetic sprites whose pixels are known exactly."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from regionprompt.errors import DatasetError
from regionprompt.world.backgrounds import BACKGROUND_KINDS, render_background
from regionprompt.world.render import SceneRenderer, SpriteTransformer
from regionprompt.world.scene import ALPHA_VISIBLE, SceneConfig

MAGENTA = (255, 0, 255)
STYLES = ("google", "twitter")


@dataclass(frozen=True)
class FakeConcept:
    id: int
    name: str
    synonyms: tuple[str, ...]
    split: str
    weight: float


class FakeSprites:
    """Concept ``i``: a filled ellipse of a per-concept size on transparency; ``twitter`` adds a square."""

    def __init__(self, color: tuple[int, int, int] | None = None) -> None:
        self.color = color

    def array(self, concept_id: int, style: str) -> np.ndarray:
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        color = self.color or (40 + 20 * (concept_id % 10), 200 - 15 * (concept_id % 10), 90)
        draw.ellipse((6 + concept_id % 7, 4, 58, 60 - concept_id % 9), fill=(*color, 255))
        if style == "twitter":
            draw.rectangle((20, 20, 40, 40), fill=(10, 10, 10, 255))
        return np.asarray(image)


CONCEPTS = [
    FakeConcept(i + 1, name, (), "base" if i < 6 else "novel", 1.0)
    for i, name in enumerate(["dog", "cat", "apple", "bicycle", "kite", "tree", "octopus", "rocket", "ghost"])
]


def _renderer(config: SceneConfig | None = None, sprites: FakeSprites | None = None) -> SceneRenderer:
    return SceneRenderer(CONCEPTS, sprites or FakeSprites(), STYLES, config or SceneConfig(size=160))


def test_scene_is_a_pure_function_of_seed_split_index() -> None:
    first = _renderer().render("test", 5, seed=7)
    other = _renderer()
    for index in range(5):  # a warm cache and a different history must not change scene 5
        other.render("val", index, seed=7)
    again = other.render("test", 5, seed=7)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.objects == again.objects
    assert [c.text for c in first.captions] == [c.text for c in again.captions]
    different = other.render("test", 6, seed=7)
    assert not np.array_equal(np.asarray(first.image), np.asarray(different.image))


def test_splits_use_separate_seed_streams() -> None:
    renderer = _renderer()
    images = [np.asarray(renderer.render(split, 0, seed=3).image) for split in ("pretrain", "det-train", "val", "test")]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j])


def test_boxes_are_tight_around_the_visible_sprite_pixels() -> None:
    config = SceneConfig(size=160, min_objects=1, max_objects=1, max_clutter=0, brightness_jitter=0.0)
    renderer = _renderer(config, FakeSprites(MAGENTA))
    for index in range(12):
        scene = renderer.render("test", index, seed=1)
        (obj,) = scene.objects
        pixels = np.asarray(scene.image)
        ys, xs = np.nonzero(np.all(pixels == MAGENTA, axis=-1))
        x1, y1, x2, y2 = obj.box_xyxy
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
        # Every opaque sprite pixel is inside the box, and the box adds at most the blended rim.
        assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
        assert xs.min() - x1 <= 2 and x2 - 1 - xs.max() <= 2 and ys.min() - y1 <= 2 and y2 - 1 - ys.max() <= 2


def test_transformer_crops_to_alpha_and_hits_the_requested_size() -> None:
    transformer = SpriteTransformer(FakeSprites())
    for rotation in (0, -15, 9):
        for longer in (16, 47, 80):
            sprite = transformer.transform(3, "google", True, rotation, longer)
            visible = sprite[..., 3] >= ALPHA_VISIBLE
            assert visible[0].any() and visible[-1].any() and visible[:, 0].any() and visible[:, -1].any()
            assert longer - 2 <= max(sprite.shape[:2]) <= longer


def test_objects_in_size_range_inside_canvas_and_mostly_visible() -> None:
    config = SceneConfig(size=160)
    renderer = _renderer(config)
    sides = []
    for index in range(30):
        scene = renderer.render("val", index, seed=2)
        assert 1 <= len(scene.objects) <= config.max_objects
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box_xyxy
            assert 0 <= x1 < x2 <= config.size and 0 <= y1 < y2 <= config.size
            sides.append(max(obj.box[2], obj.box[3]))
            assert obj.visible_fraction >= config.min_visible
            assert abs(obj.rotation) <= config.max_rotation
    assert min(sides) >= config.min_object_size - 2
    assert max(sides) <= config.max_object_size
    # Scales really span the range, and occlusion really happens.
    assert min(sides) < 24 and max(sides) > 60


def test_occlusion_happens_and_is_recorded() -> None:
    renderer = _renderer(SceneConfig(size=160, min_objects=10, max_objects=12))
    fractions = [o.visible_fraction for i in range(10) for o in renderer.render("test", i, seed=4).objects]
    assert min(fractions) < 0.95
    assert min(fractions) >= 0.4


def test_det_train_labels_base_only_pretrain_labels_nothing() -> None:
    renderer = _renderer(SceneConfig(size=128, min_objects=6, max_objects=10))
    split_of = {c.id: c.split for c in CONCEPTS}
    saw_unlabelled_novel = False
    for index in range(10):
        det = renderer.render("det-train", index, seed=0)
        for obj in det.objects:
            assert obj.labelled == (split_of[obj.concept_id] == "base")
            saw_unlabelled_novel |= split_of[obj.concept_id] == "novel"
        assert set(det.labels().tolist()) <= {c.id for c in CONCEPTS if c.split == "base"}
        pre = renderer.render("pretrain", index, seed=0)
        assert pre.objects and not pre.labelled_objects and pre.boxes_xyxy().shape == (0, 4)
        test = renderer.render("test", index, seed=0)
        assert all(o.labelled for o in test.objects)
    assert saw_unlabelled_novel


def test_style_restriction() -> None:
    renderer = _renderer(SceneConfig(size=128, style="twitter"))
    styles = {o.style for i in range(8) for o in renderer.render("test", i, seed=0).objects}
    assert styles == {"twitter"}
    mixed = {o.style for i in range(8) for o in _renderer().render("test", i, seed=0).objects}
    assert mixed == {"google", "twitter"}
    with pytest.raises(DatasetError, match="style"):
        _renderer(SceneConfig(style="openmoji"))


def test_backgrounds_vary_and_keep_shape() -> None:
    rng = np.random.default_rng(0)
    for kind in BACKGROUND_KINDS:
        background = render_background(rng, 96, kind)
        assert background.image.shape == (96, 96, 3) and background.image.dtype == np.uint8
        assert background.kind == kind and background.colors[0] in background.phrase
        if kind != "solid":
            assert background.image.reshape(-1, 3).std(axis=0).max() > 1.0


def test_config_rejects_bad_values() -> None:
    with pytest.raises(DatasetError):
        SceneConfig(size=16)
    with pytest.raises(DatasetError):
        SceneConfig(min_objects=5, max_objects=2)
    with pytest.raises(DatasetError):
        SceneConfig(size=64, min_object_size=40)
    with pytest.raises(DatasetError):
        replace(SceneConfig(), captions_per_image=0)
