"""Scene rendering: sample concepts, transform sprites, place them with controlled occlusion, caption.

The whole scene is a pure function of ``(config, seed, split, index)`` and the vendored assets. The
sprite cache only saves work; it never changes a result.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from regionprompt.errors import DatasetError
from regionprompt.world.backgrounds import render_background
from regionprompt.world.captions import CaptionObject, make_captions
from regionprompt.world.clutter import draw_clutter
from regionprompt.world.scene import ALPHA_VISIBLE, Scene, SceneConfig, SceneObject, scene_seed_sequence
from regionprompt.world.splits import SplitSpec, get_split


class ConceptLike(Protocol):
    id: int
    name: str
    synonyms: tuple[str, ...]
    split: str
    weight: float


class SpriteSource(Protocol):
    def array(self, concept_id: int, style: str) -> np.ndarray:
        """``(64, 64, 4)`` uint8 RGBA sprite."""
        ...


def _alpha_bbox(alpha: np.ndarray, threshold: int) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` (exclusive end) of pixels with alpha >= threshold, or ``None``."""
    rows = np.flatnonzero((alpha >= threshold).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((alpha >= threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class SpriteTransformer:
    """Flip / rotate / resize sprites to a tight RGBA crop, with an LRU cache.

    Resampling runs on premultiplied alpha (Pillow converts RGBA to RGBa for resize/rotate), so
    edges do not pick up the black of transparent pixels.
    """

    def __init__(self, sprites: SpriteSource, capacity: int = 4096) -> None:
        self._sprites = sprites
        self._capacity = capacity
        self._base: dict[tuple[int, str], Image.Image] = {}
        self._cache: OrderedDict[tuple[int, str, bool, int, int], np.ndarray] = OrderedDict()

    def _base_crop(self, concept_id: int, style: str) -> Image.Image:
        key = (concept_id, style)
        crop = self._base.get(key)
        if crop is None:
            rgba = np.ascontiguousarray(self._sprites.array(concept_id, style), dtype=np.uint8)
            if rgba.ndim != 3 or rgba.shape[2] != 4:
                raise DatasetError(f"sprite {concept_id}/{style} must be (H, W, 4) RGBA, got shape {rgba.shape}")
            bbox = _alpha_bbox(rgba[..., 3], 1)
            if bbox is None:
                raise DatasetError(f"sprite {concept_id}/{style} is fully transparent")
            x1, y1, x2, y2 = bbox
            crop = Image.fromarray(rgba[y1:y2, x1:x2], "RGBA")
            self._base[key] = crop
        return crop

    def transform(self, concept_id: int, style: str, flip: bool, rotation: int, longer_side: int) -> np.ndarray:
        """``(h, w, 4)`` uint8 RGBA, cropped tight to alpha >= ALPHA_VISIBLE, longer side ~``longer_side``."""
        key = (concept_id, style, flip, rotation, longer_side)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        image = self._base_crop(concept_id, style)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rotation:
            # Rotate at source resolution, then scale: the final longer side is then exactly the target.
            image = image.rotate(rotation, resample=Image.Resampling.BICUBIC, expand=True)
            bbox = _alpha_bbox(np.asarray(image)[..., 3], 1)
            if bbox is not None:
                image = image.crop(bbox)
        scale = longer_side / max(image.size)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        array = np.asarray(image.resize(new_size, Image.Resampling.BICUBIC))
        bbox = _alpha_bbox(array[..., 3], ALPHA_VISIBLE)
        if bbox is None:  # a sliver scaled below visibility: keep its single strongest pixel row/col
            bbox = _alpha_bbox(array[..., 3], int(array[..., 3].max()))
        x1, y1, x2, y2 = bbox  # type: ignore[misc]
        result = np.ascontiguousarray(array[y1:y2, x1:x2])
        result.setflags(write=False)
        self._cache[key] = result
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return result


class SceneRenderer:
    """Renders EmojiWorld scenes from concepts and sprites.

    Args:
        concepts: the concept list (ids, names, synonyms, base/novel split, sampling weights).
        sprites: RGBA sprites per ``(concept_id, style)``.
        styles: artwork styles to mix (``config.style`` restricts to one of them).
        config: scene parameters.
    """

    def __init__(
        self,
        concepts: Sequence[ConceptLike],
        sprites: SpriteSource,
        styles: Sequence[str],
        config: SceneConfig | None = None,
    ) -> None:
        self.config = config or SceneConfig()
        if not concepts:
            raise DatasetError("EmojiWorld needs at least one concept")
        if self.config.style is not None and self.config.style not in styles:
            raise DatasetError(f"unknown EmojiWorld style {self.config.style!r}; choose one of {', '.join(styles)}")
        self.concepts = tuple(concepts)
        self.styles = (self.config.style,) if self.config.style else tuple(styles)
        self._weights = np.asarray([float(c.weight) for c in self.concepts], dtype=np.float64)
        if not (np.all(self._weights > 0) and np.all(np.isfinite(self._weights))):
            raise DatasetError("EmojiWorld concept weights must be positive and finite")
        self._cumulative: dict[float, np.ndarray] = {}
        self._transformer = SpriteTransformer(sprites)

    @classmethod
    def default(cls, config: SceneConfig | None = None) -> SceneRenderer:
        """A renderer over the vendored concepts and sprites."""
        from regionprompt.world.concepts import STYLES, load_concepts
        from regionprompt.world.sprites import SpriteBank

        return cls(load_concepts(), SpriteBank.load(), STYLES, config)

    def _cumulative_probabilities(self, temperature: float) -> np.ndarray:
        cumulative = self._cumulative.get(temperature)
        if cumulative is None:
            weights = self._weights**temperature
            cumulative = self._cumulative[temperature] = np.cumsum(weights / weights.sum())
        return cumulative

    def _sample_concepts(self, rng: np.random.Generator, count: int, temperature: float) -> list[int]:
        """Indices into ``self.concepts``, drawn ~ ``weight ** temperature``; some concepts repeat."""
        cumulative = self._cumulative_probabilities(temperature)
        picked: list[int] = []
        while len(picked) < count:
            index = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(self.concepts) - 1)
            repeats = int(rng.integers(2, 5)) if rng.random() < self.config.repeat_prob else 1
            picked.extend([index] * min(repeats, count - len(picked)))
        return picked

    def render(self, split: str | SplitSpec, index: int, seed: int) -> Scene:
        """Render scene ``index`` of ``split`` for ``seed`` (see :mod:`regionprompt.world.scene`)."""
        spec = split if isinstance(split, SplitSpec) else get_split(split)
        cfg = self.config
        layout_seq, caption_seq = scene_seed_sequence(seed, spec.code, index).spawn(2)
        rng = np.random.default_rng(layout_seq)

        background = render_background(rng, cfg.size)
        canvas = Image.fromarray(background.image, "RGB")
        clutter = int(rng.integers(0, cfg.max_clutter + 1))
        draw_clutter(canvas, rng, clutter)

        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        plans = []
        log_lo, log_hi = math.log(cfg.min_object_size), math.log(cfg.max_object_size)
        temperature = spec.temperature if cfg.concept_temperature is None else cfg.concept_temperature
        for concept_index in self._sample_concepts(rng, count, temperature):
            style = self.styles[int(rng.integers(len(self.styles)))]
            flip = bool(rng.random() < cfg.flip_prob)
            rotation = int(rng.integers(-cfg.max_rotation, cfg.max_rotation + 1)) if rng.random() < cfg.rotation_prob else 0
            longer = int(round(math.exp(rng.uniform(log_lo, log_hi))))
            brightness = float(rng.uniform(1 - cfg.brightness_jitter, 1 + cfg.brightness_jitter))
            plans.append((concept_index, style, flip, rotation, longer, brightness))
        # Big objects go down first, so small ones on top rarely hide them.
        plans.sort(key=lambda plan: -plan[4])

        owner = np.full((cfg.size, cfg.size), -1, dtype=np.int16)
        placed: list[tuple[int, str, bool, int, tuple[int, int, int, int]]] = []
        areas: list[int] = []
        visible: list[int] = []
        for concept_index, style, flip, rotation, longer, brightness in plans:
            concept = self.concepts[concept_index]
            sprite = self._transformer.transform(concept.id, style, flip, rotation, longer)
            height, width = sprite.shape[:2]
            mask = sprite[..., 3] >= ALPHA_VISIBLE
            for _ in range(cfg.placement_tries):
                x = int(rng.integers(0, cfg.size - width + 1))
                y = int(rng.integers(0, cfg.size - height + 1))
                region = owner[y : y + height, x : x + width]
                under = region[mask]
                under = under[under >= 0]
                covered = np.bincount(under, minlength=len(placed)) if under.size else None
                if covered is not None:
                    remaining = np.asarray(visible) - covered
                    if np.any(remaining < cfg.min_visible * np.asarray(areas)):
                        continue
                    visible = remaining.tolist()
                region[mask] = len(placed)
                rgb = sprite[..., :3]
                if brightness != 1.0:
                    rgb = np.clip(rgb.astype(np.float32) * brightness + 0.5, 0, 255).astype(np.uint8)
                canvas.paste(Image.fromarray(rgb, "RGB"), (x, y), Image.fromarray(np.ascontiguousarray(sprite[..., 3]), "L"))
                placed.append((concept_index, style, flip, rotation, (x, y, width, height)))
                area = int(mask.sum())
                areas.append(area)
                visible.append(area)
                break

        objects = []
        caption_objects = []
        for (concept_index, style, flip, rotation, box), area, seen in zip(placed, areas, visible):
            concept = self.concepts[concept_index]
            objects.append(
                SceneObject(
                    concept_id=concept.id,
                    style=style,
                    box=box,
                    pixel_area=area,
                    visible_fraction=round(seen / area, 4),
                    flip=flip,
                    rotation=rotation,
                    labelled=spec.labels_concept(concept.split),
                )
            )
            if spec.captions_concept(concept.split):
                x, y, w, h = box
                caption_objects.append(CaptionObject(concept.id, concept.name, tuple(concept.synonyms), (x, y, x + w, y + h)))
        captions = make_captions(
            caption_objects,
            background.phrase,
            np.random.default_rng(caption_seq),
            count=cfg.captions_per_image,
            canvas_size=cfg.size,
        )
        return Scene(
            split=spec.name,
            index=index,
            seed=seed,
            image=canvas,
            objects=tuple(objects),
            background_kind=background.kind,
            background_phrase=background.phrase,
            clutter=clutter,
            captions=tuple(captions),
        )
