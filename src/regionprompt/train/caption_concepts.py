"""Concept targets parsed from captions, for the teacher's caption-concept loss.

Pure caption contrastive learning needs far more image-text pairs than a CPU can process before
object words mean anything (measured: 800 steps x 128 pairs left object recognition at chance). The
captions already name most objects, so the teacher gets a second, denser signal from the *same*
captions: every noun phrase of an image's captions (RegionCLIP's concept parsing, step 1) is a
positive label of the image, every other pool concept a negative. No boxes and no concept ids from
the world are used, so the open-vocabulary protocol is unchanged: only caption text supervises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.logging_utils import get_logger
from regionprompt.vl.concept_pool import CaptionUnit, ConceptPool, build_concept_pool
from regionprompt.vl.nouns import make_extractor

_log = get_logger("train.concepts")


@dataclass(frozen=True)
class CaptionConcepts:
    """The pool and, per image, the pool indices its captions mention.

    Attributes:
        pool: concept names parsed from the training captions (count >= the pool's min_count).
        positives: ``positives[i]`` = sorted int64 array of pool indices mentioned by image ``i``.
    """

    pool: ConceptPool
    positives: tuple[np.ndarray, ...]

    def vocabulary(self, indices: np.ndarray, negatives: int, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Pool indices for one step and the ``(B, V)`` multi-hot targets of the images ``indices``.

        The vocabulary is every concept positive in the batch plus ``negatives`` random other concepts
        (all of the pool when it is smaller), sorted.
        """
        positive = np.unique(np.concatenate([self.positives[i] for i in indices] + [np.zeros(0, np.int64)]))
        others = np.setdiff1d(np.arange(len(self.pool.names)), positive)
        extra = rng.choice(others, size=min(negatives, len(others)), replace=False) if len(others) else others
        vocab = np.sort(np.concatenate([positive, extra]).astype(np.int64))
        where = {int(c): j for j, c in enumerate(vocab)}
        targets = torch.zeros(len(indices), len(vocab))
        for row, i in enumerate(indices):
            targets[row, [where[int(c)] for c in self.positives[i]]] = 1.0
        return vocab, targets


def caption_concepts(records: list[dict[str, Any]], *, min_count: int, pool_path: Path, backend: str = "rules") -> CaptionConcepts:
    """Parse every image's captions; build the pool (or reuse the one saved at ``pool_path``)."""
    units = [CaptionUnit(str(i), tuple(r["captions"])) for i, r in enumerate(records)]
    extractor = make_extractor(backend)
    if pool_path.exists():
        pool = ConceptPool.load(pool_path)
    else:
        pool, _ = build_concept_pool(units, backend=extractor, min_count=min_count, source="scene cache captions")
        pool.save(pool_path)
    # Keyed without spaces: the pool merged spelling variants ("cell phone" / "cellphone") into one name.
    index = {name.replace(" ", ""): i for i, name in enumerate(pool.names)}
    owners = [i for i, unit in enumerate(units) for _ in unit.captions]
    per_image: list[set[int]] = [set() for _ in units]
    for owner, phrases in zip(owners, extractor.extract(c for unit in units for c in unit.captions)):
        per_image[owner].update(index[key] for key in (p.replace(" ", "") for p in phrases) if key in index)
    positives = tuple(np.asarray(sorted(s), dtype=np.int64) for s in per_image)
    mean = float(np.mean([len(p) for p in positives])) if positives else 0.0
    _log.info("caption concepts: pool of %d, %.2f positives per image", len(pool.names), mean)
    return CaptionConcepts(pool, positives)


class ConceptHead(nn.Module):
    """Learnable scale and bias of the sigmoid image-concept logits (SigLIP's initialisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def loss(self, image_emb: torch.Tensor, concept_emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Multi-label sigmoid loss of ``(B, D)`` images vs ``(V, D)`` concepts (both normalised) and
        ``(B, V)`` 0/1 targets, summed over concepts, averaged over images and divided by the mean
        number of positives per image (so it reads as "loss per mentioned concept")."""
        logits = self.log_scale.exp() * image_emb @ concept_emb.t() + self.bias
        per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)
        return per_image.mean() / targets.sum(dim=1).mean().clamp_min(1.0)
