"""EmojiWorld as PyTorch datasets that render scenes on the fly (no disk).

Scene ``i`` here is pixel- and box-identical to ``images/<split>_<i>.png`` of a disk build with the
same split, seed and :class:`SceneConfig`.

Each sample is ``(image, target)``:

* ``image`` -- ``(3, H, W)`` uint8 tensor (or float32 in ``[0, 1]`` with ``as_float=True``);
* ``target`` -- dict with ``boxes`` ``(N, 4)`` float32 xyxy absolute pixels, ``labels`` ``(N,)`` int64
  concept ids (only objects the split labels; empty for ``pretrain``), ``captions`` ``list[str]``,
  ``image_id`` int (``index + 1``) and ``index`` int.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from regionprompt.errors import DatasetError
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import Scene, SceneConfig
from regionprompt.world.splits import get_split

Sample = tuple[torch.Tensor, dict[str, Any]]


def scene_to_sample(scene: Scene, *, as_float: bool = False) -> Sample:
    """Convert a rendered scene to ``(image, target)`` (see module docstring)."""
    pixels = torch.from_numpy(np.asarray(scene.image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    image = pixels.to(torch.float32).div_(255.0) if as_float else pixels
    target = {
        "boxes": torch.from_numpy(scene.boxes_xyxy()),
        "labels": torch.from_numpy(scene.labels()),
        "captions": [c.text for c in scene.captions],
        "image_id": scene.image_id,
        "index": scene.index,
    }
    return image, target


class _RendererMixin:
    """Builds the default renderer lazily, so each DataLoader worker loads the assets itself."""

    def _init_renderer(self, config: SceneConfig | None, renderer: SceneRenderer | None) -> None:
        self.config = renderer.config if renderer is not None else (config or SceneConfig())
        self._renderer = renderer

    @property
    def renderer(self) -> SceneRenderer:
        if self._renderer is None:
            self._renderer = SceneRenderer.default(self.config)
        return self._renderer


class EmojiWorldDataset(_RendererMixin, Dataset[Sample]):
    """Map-style dataset of scenes ``0 .. num_images - 1``; DataLoader workers get disjoint indices by design.

    Args:
        split: ``pretrain`` / ``det-train`` / ``val`` / ``test``.
        num_images: dataset length.
        seed: world seed (as for ``regionprompt world build --seed``).
        config: scene parameters (ignored when ``renderer`` is given).
        renderer: a ready renderer (e.g. over custom concepts); default: the vendored assets.
        as_float: return float32 images in ``[0, 1]`` instead of uint8.
    """

    def __init__(
        self,
        split: str,
        num_images: int,
        seed: int,
        config: SceneConfig | None = None,
        *,
        renderer: SceneRenderer | None = None,
        as_float: bool = False,
    ) -> None:
        if num_images < 0:
            raise DatasetError(f"number of images must be >= 0, got {num_images}")
        self.split = get_split(split).name
        self.num_images = num_images
        self.seed = seed
        self.as_float = as_float
        self._init_renderer(config, renderer)

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> Scene:
        """The full scene record (all objects, captions with mentions) of ``index``."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"scene index {index} out of range 0..{self.num_images - 1}")
        return self.renderer.render(self.split, index, self.seed)

    def __getitem__(self, index: int) -> Sample:
        return scene_to_sample(self.scene(index), as_float=self.as_float)


class EmojiWorldStream(_RendererMixin, IterableDataset[Sample]):
    """Endless (or bounded) stream of scenes ``start, start + 1, ...`` for training.

    With several DataLoader workers, worker ``w`` of ``W`` yields indices ``start + w``,
    ``start + w + W``, ... so no scene is produced twice.

    Args:
        split, seed, config, renderer, as_float: as for :class:`EmojiWorldDataset`.
        start: first scene index.
        num_images: stop after indices ``start .. start + num_images - 1``; ``None`` streams forever.
    """

    def __init__(
        self,
        split: str,
        seed: int,
        config: SceneConfig | None = None,
        *,
        start: int = 0,
        num_images: int | None = None,
        renderer: SceneRenderer | None = None,
        as_float: bool = False,
    ) -> None:
        if start < 0 or (num_images is not None and num_images < 0):
            raise DatasetError(f"stream start and length must be >= 0, got start={start}, num_images={num_images}")
        self.split = get_split(split).name
        self.seed = seed
        self.start = start
        self.num_images = num_images
        self.as_float = as_float
        self._init_renderer(config, renderer)

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.start + worker
        stop = None if self.num_images is None else self.start + self.num_images
        while stop is None or index < stop:
            yield scene_to_sample(self.renderer.render(self.split, index, self.seed), as_float=self.as_float)
            index += workers
