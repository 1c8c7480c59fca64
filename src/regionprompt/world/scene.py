"""Scene configuration, scene records and the per-scene random streams.

Scene ``index`` of split ``split`` built with ``seed`` depends on nothing else: its random stream is
derived from ``(seed, split code, index)`` with :class:`numpy.random.SeedSequence`, so a disk build,
a streaming dataset and a single ``world show`` all produce the same pixels and boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from regionprompt.errors import DatasetError
from regionprompt.world.captions import Caption

# Bump when the rendering of a given (seed, split, index) changes.
WORLD_VERSION = "2"  # 2: captions name objects by salience (area), background less often

# A sprite pixel counts as part of the object (for boxes and visibility) at alpha >= this (of 255).
ALPHA_VISIBLE = 64


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Attributes:
        size: canvas side in pixels (square canvas).
        min_objects, max_objects: number of objects attempted per scene (uniform); objects that
            cannot be placed without hiding others are skipped, so a scene may hold fewer.
        min_object_size: smallest longer box side in pixels.
        max_object_frac: largest longer box side as a fraction of ``size``.
        flip_prob: probability of a horizontal flip per object.
        rotation_prob: probability that an object is rotated at all.
        max_rotation: largest rotation in whole degrees (either direction).
        brightness_jitter: objects' RGB is scaled by a factor in ``1 +- brightness_jitter`` (no hue change).
        repeat_prob: probability that a sampled concept appears 2-4 times (gives captions counts).
        min_visible: every labelled object keeps at least this fraction of its pixels visible.
        placement_tries: random positions tried per object before it is skipped.
        max_clutter: up to this many unlabelled distractor shapes per scene.
        concept_temperature: draw concepts with probability ~ ``weight ** concept_temperature``;
            ``None`` uses the split's default (see :mod:`regionprompt.world.splits`).
        style: restrict sprites to one artwork style (``"google"`` / ``"twitter"``); ``None`` mixes them.
        captions_per_image: captions written per image (at least one).
    """

    size: int = 320
    min_objects: int = 1
    max_objects: int = 12
    min_object_size: int = 16
    max_object_frac: float = 0.5
    flip_prob: float = 0.5
    rotation_prob: float = 0.5
    max_rotation: int = 15
    brightness_jitter: float = 0.08
    repeat_prob: float = 0.25
    min_visible: float = 0.4
    placement_tries: int = 12
    max_clutter: int = 8
    concept_temperature: float | None = None
    style: str | None = None
    captions_per_image: int = 3

    def __post_init__(self) -> None:
        if self.size < 32:
            raise DatasetError(f"EmojiWorld canvas size must be >= 32 px, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise DatasetError(f"EmojiWorld needs 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.max_object_frac <= 1 or self.min_object_size > self.max_object_size:
            raise DatasetError(
                f"EmojiWorld object sizes: min_object_size={self.min_object_size} must not exceed "
                f"max_object_frac*size={self.max_object_size} (max_object_frac in (0, 1])"
            )
        if not 0 <= self.min_visible <= 1:
            raise DatasetError(f"EmojiWorld min_visible must be in [0, 1], got {self.min_visible}")
        if self.concept_temperature is not None and not 0 <= self.concept_temperature < float("inf"):
            raise DatasetError(f"EmojiWorld concept_temperature must be a finite number >= 0, got {self.concept_temperature}")
        if self.captions_per_image < 1:
            raise DatasetError(f"EmojiWorld needs at least one caption per image, got {self.captions_per_image}")

    @property
    def max_object_size(self) -> int:
        return int(self.size * self.max_object_frac)


@dataclass(frozen=True)
class SceneObject:
    """One emoji placed in a scene.

    Attributes:
        concept_id: 1-based concept (COCO category) id.
        style: artwork style of the sprite.
        box: ``(x, y, w, h)`` COCO xywh, absolute integer pixels, tight around the sprite's pixels
            with alpha >= :data:`ALPHA_VISIBLE`; the full extent even where later objects cover it.
        pixel_area: number of sprite pixels with alpha >= :data:`ALPHA_VISIBLE`.
        visible_fraction: share of those pixels not covered by later objects (>= ``min_visible``).
        flip: horizontally flipped.
        rotation: rotation in degrees, counter-clockwise.
        labelled: whether the split annotates it (e.g. ``False`` for novel concepts in ``det-train``).
    """

    concept_id: int
    style: str
    box: tuple[int, int, int, int]
    pixel_area: int
    visible_fraction: float
    flip: bool
    rotation: int
    labelled: bool

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.box
        return (x, y, x + w, y + h)


@dataclass(frozen=True)
class Scene:
    """A rendered scene: RGB image, every placed object (labelled or not), background and captions."""

    split: str
    index: int
    seed: int
    image: Image.Image
    objects: tuple[SceneObject, ...]
    background_kind: str
    background_phrase: str
    clutter: int
    captions: tuple[Caption, ...] = field(default=())

    @property
    def image_id(self) -> int:
        """1-based COCO image id (``index + 1``)."""
        return self.index + 1

    @property
    def file_name(self) -> str:
        return f"{self.split}_{self.index:06d}.png"

    @property
    def labelled_objects(self) -> tuple[SceneObject, ...]:
        return tuple(o for o in self.objects if o.labelled)

    def boxes_xyxy(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy absolute-pixel boxes of the labelled objects."""
        boxes = [o.box_xyxy for o in self.labelled_objects]
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def labels(self) -> np.ndarray:
        """``(N,)`` int64 concept ids of the labelled objects (same order as :meth:`boxes_xyxy`)."""
        return np.asarray([o.concept_id for o in self.labelled_objects], dtype=np.int64)


def scene_seed_sequence(seed: int, split_code: int, index: int) -> np.random.SeedSequence:
    """The root random state of one scene; children: ``[0]`` layout and pixels, ``[1]`` captions."""
    if seed < 0 or index < 0:
        raise DatasetError(f"EmojiWorld seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.SeedSequence(entropy=seed, spawn_key=(split_code, index))
