"""Training batches of image-caption pairs streamed from WebDataset shards (:mod:`regionprompt.data.webdataset`).

A rank's batch at step ``s`` is the samples ``s * B .. (s + 1) * B - 1`` of its shuffled shard stream and
one caption per image drawn from ``(seed, step, rank)``: a function of (seed, step, rank, world size).
Asked for the next step, it keeps reading; asked for any other (a resumed run), it restarts the stream
and skips the samples already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regionprompt.data.webdataset import Sample, ShardStream
from regionprompt.errors import ImageLoadError
from regionprompt.images import load_image
from regionprompt.logging_utils import get_logger

_log = get_logger("train.shards")


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop the centre: ``(size, size, 3)`` uint8 (CLIP's preprocessing)."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class ShardBatches:
    """``batches(step) -> (keys, images (B, 3, S, S) float in [0, 1], captions)`` for one rank."""

    def __init__(self, shards: list[Path], *, batch_size: int, image_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, buffer: int = 1000) -> None:
        self.stream = ShardStream(shards, seed=seed, rank=rank, world_size=world_size, buffer=buffer)
        self.batch_size, self.image_size, self.seed, self.rank = batch_size, image_size, seed, rank
        self._samples: Iterator[Sample] | None = None
        self._next_step = -1

    def __call__(self, step: int) -> tuple[list[str], torch.Tensor, list[str]]:
        if step != self._next_step or self._samples is None:
            if step:
                _log.info("shard stream: skipping the %d samples of steps 0..%d", step * self.batch_size, step - 1)
            self._samples = self.stream.samples(skip=step * self.batch_size)
        self._next_step = step + 1
        pick = np.random.default_rng([self.seed, 1_000_003, step, self.rank])
        keys, pixels, captions = [], [], []
        for sample in (next(self._samples) for _ in range(self.batch_size)):
            try:
                image = load_image(sample.image, name=sample.key).image
            except ImageLoadError as exc:  # a broken image in a web crawl: a black square keeps the step's shape
                _log.warning("%s", exc)
                image = Image.new("RGB", (self.image_size, self.image_size))
            keys.append(sample.key)
            pixels.append(square_pixels(image, self.image_size))
            captions.append(sample.captions[int(pick.integers(len(sample.captions)))])
        images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        return keys, images.float().div_(255.0), captions
