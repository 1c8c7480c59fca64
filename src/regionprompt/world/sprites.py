"""Sprite access for EmojiWorld: one RGBA atlas per artistic style, loaded once.

Each atlas (``assets/atlas_<style>.png``) is a grid of ``sprite_size`` x ``sprite_size`` RGBA cells; concept
``id`` lives in cell ``id - 1`` (row-major, ``columns`` cells per row), as written by
``scripts/build_emoji_assets.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from PIL import Image

from regionprompt.errors import RegionPromptError
from regionprompt.world.concepts import ASSETS_DIR, STYLES, load_concepts, load_index


class SpriteBank:
    """All concept sprites of all styles, as read-only uint8 arrays.

    ``array(id, style)`` is a view into the atlas: (S, S, 4) uint8 RGBA with S = ``sprite_size`` (64),
    straight (not premultiplied) alpha, fully transparent pixels set to 0.
    """

    def __init__(self, atlases: Mapping[str, np.ndarray], columns: int, sprite_size: int, n_concepts: int) -> None:
        self._atlases = dict(atlases)
        self.columns = columns
        self.sprite_size = sprite_size
        self.n_concepts = n_concepts
        for style, atlas in self._atlases.items():
            rows = -(-n_concepts // columns)
            if atlas.shape != (rows * sprite_size, columns * sprite_size, 4):
                raise RegionPromptError(
                    f"atlas for style {style!r} has shape {atlas.shape}, expected "
                    f"{(rows * sprite_size, columns * sprite_size, 4)} for {n_concepts} concepts"
                )
            atlas.setflags(write=False)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load(cls) -> SpriteBank:
        """The vendored atlases of every style in :data:`STYLES` (cached: loaded once per process)."""
        index = load_index()
        atlases = {}
        for style in STYLES:
            path = ASSETS_DIR / index["atlas"][style]["file"]
            try:
                with Image.open(path) as im:
                    atlases[style] = np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()
            except (OSError, ValueError) as exc:
                raise RegionPromptError(f"cannot read EmojiWorld atlas {path}: {exc}") from exc
        return cls(atlases, int(index["atlas"][STYLES[0]]["columns"]), int(index["sprite_size"]), len(load_concepts()))

    @property
    def styles(self) -> tuple[str, ...]:
        return tuple(self._atlases)

    def array(self, concept_id: int, style: str) -> np.ndarray:
        """(S, S, 4) uint8 RGBA read-only view of concept ``concept_id`` drawn in ``style``."""
        atlas = self._atlases.get(style)
        if atlas is None:
            raise RegionPromptError(f"unknown sprite style {style!r}; expected one of {self.styles}")
        if not isinstance(concept_id, (int, np.integer)) or not 1 <= concept_id <= self.n_concepts:
            raise RegionPromptError(f"unknown EmojiWorld concept id {concept_id!r} (valid: 1..{self.n_concepts})")
        row, col = divmod(int(concept_id) - 1, self.columns)
        s = self.sprite_size
        return atlas[row * s:(row + 1) * s, col * s:(col + 1) * s]

    def sprite(self, concept_id: int, style: str) -> Image.Image:
        """RGBA PIL image (S x S) of concept ``concept_id`` in ``style``; a copy the caller may modify."""
        return Image.fromarray(np.ascontiguousarray(self.array(concept_id, style)))
