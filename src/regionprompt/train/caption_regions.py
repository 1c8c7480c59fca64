"""Captions teach the region namer the names nobody boxed: an image-level term for the RegionCLIP transfer.

Fine-tuning a region encoder on base boxes (:mod:`regionprompt.train.ov_transfer`) teaches it the base
names only; the novel names are what region-text pretraining left in it, and that is little (3 % of
novel objects named right, top-1 among 1,177 names, on val). RegionCLIP's own answer is that captions
name every concept. So, beside the box loss, each step also takes a batch of *iconic* image-caption
pairs (EmojiWorld ``pretrain``: 1-3 large objects, captions only, no boxes) and asks the region embedding
of the whole image to name what its captions mention:

* the targets are the noun phrases parsed from the image's captions that are in the caption pool
  (:func:`~regionprompt.train.caption_concepts.caption_concepts`, the teacher's caption-concept targets);
* the classifier is the frozen text embedding of *every* pool phrase (template ensemble, computed once),
  so each step names among the whole pool (1,500+ phrases), not among a sampled handful;
* loss: softmax cross-entropy over the pool at the transfer's temperature, averaged over each image's
  mentioned phrases (an image with three objects asks for all three).

Only caption text supervises this term: no boxes and no concept ids of the world, so the open-vocabulary
protocol is unchanged (novel names appear in captions, never with a box). Batches are functions of the
step number, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regionprompt.logging_utils import get_logger
from regionprompt.regionclip.region_encoder import encode_regions
from regionprompt.train.augment import augment_batch
from regionprompt.train.caption_concepts import caption_concepts
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder
from regionprompt.world.scene_cache import SceneCache

_log = get_logger("train.caption_regions")

#: Generator stream of the caption batches (apart from the transfer's scene, flip and RoI streams).
_STREAM = 6


@dataclass(frozen=True)
class CaptionBatch:
    """One step's caption images.

    Attributes:
        images: ``(B, 3, S, S)`` float in [0, 1].
        targets: ``(B, V)`` float, each row the image's mentioned pool phrases, summing to 1.
    """

    images: torch.Tensor
    targets: torch.Tensor


class CaptionImages:
    """Iconic image-caption pairs, the pool phrases each image's captions name, and the pool's text embeddings.

    Args:
        cache: a ``pretrain`` scene cache (any layout; ``iconic`` is what the term is meant for).
        embeddings: ``(V, D)`` normalised text embeddings of the pool phrases.
        positives: per image, the sorted pool indices its captions mention.
        names: the pool phrases (for logs and the recipe).
    """

    def __init__(self, cache: SceneCache, embeddings: torch.Tensor, positives: tuple[np.ndarray, ...],
                 names: tuple[str, ...]) -> None:
        if len(positives) != len(cache):
            raise ValueError(f"{len(positives)} target rows for a cache of {len(cache)} images")
        self.cache, self.embeddings, self.positives, self.names = cache, embeddings, positives, names
        #: Images whose captions name at least one pool phrase (the others teach nothing here).
        self.usable = np.asarray([i for i, p in enumerate(positives) if len(p)], dtype=np.int64)
        if len(self.usable) == 0:
            raise ValueError("no caption of the cache names a pool phrase")

    def batch(self, step: int, size: int, seed: int, *, augment: bool = False) -> CaptionBatch:
        """The ``size`` caption images of ``step`` (epoch permutations of the usable images)."""
        per_epoch = max(1, len(self.usable) // size)
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([seed, _STREAM, epoch]).permutation(len(self.usable))
        indices = np.sort(self.usable[order[position * size:(position + 1) * size]])
        pixels = torch.from_numpy(np.ascontiguousarray(self.cache.images[indices])).permute(0, 3, 1, 2)
        images = pixels.float().div_(255.0)
        if augment:
            images = augment_batch(images, seed + _STREAM, step)
        targets = torch.zeros(len(indices), len(self.names))
        for row, i in enumerate(indices):
            targets[row, torch.from_numpy(self.positives[i])] = 1.0 / len(self.positives[i])
        return CaptionBatch(images, targets)

    def loss(self, clip: RegionPromptCLIP, batch: CaptionBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the whole-image region embeddings over the pool, and the top-1 hit rate.

        Returns:
            the scalar loss and the fraction of images whose best phrase is one their captions mention.
        """
        images = batch.images.to(self.embeddings.device)
        side_h, side_w = images.shape[-2:]
        whole = images.new_tensor([[0.0, 0.0, float(side_w), float(side_h)]])
        regions = encode_regions(clip, images, [whole] * len(images))  # (B, D) normalised
        logits = regions @ self.embeddings.t() / temperature
        targets = batch.targets.to(logits.device)
        loss = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
        with torch.no_grad():
            hit = targets.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1) > 0
        return loss, hit.float().mean()


def load_caption_images(cache: SceneCache, clip: RegionPromptCLIP, *, templates: str, min_count: int,
                        pool_path: Path, text_cache: EmbeddingCache | None,
                        device: torch.device = torch.device("cpu")) -> CaptionImages:
    """Parse the cache's captions into pool targets (the pool is saved at ``pool_path`` and reused) and embed
    every pool phrase with ``clip``'s frozen text side (the embeddings are put on ``device``)."""
    concepts = caption_concepts(cache.records, min_count=min_count, pool_path=pool_path)
    names = tuple(concepts.pool.names)
    with torch.no_grad():
        embeddings = PromptEmbedder(clip.text_encoder(), templates, text_cache).embed(list(names)).float()
    embeddings = F.normalize(embeddings, dim=-1).to(device)
    _log.info("caption term: %d images, pool of %d phrases", len(cache), len(names))
    return CaptionImages(cache, embeddings, concepts.positives, names)


__all__ = ["CaptionBatch", "CaptionImages", "load_caption_images"]
