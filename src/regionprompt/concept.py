"""A reusable prompt concept: one category's prompt embedding, its negatives, and where it came from.

Made by a detector from text, visual exemplars (on one or several images) or both; stored in the
concept library or exported to a file; passed back to a detector to find that category again. The
embedding only means something to the model that made it, so it carries that model's hash and
detectors refuse concepts of another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from regionprompt.errors import PromptError


@dataclass(frozen=True)
class PromptConcept:
    """Attributes:
        name: category name shown on detections (non-empty).
        embedding: ``(D,)`` float32, L2-normalised positive prompt embedding.
        negatives: ``(M, D)`` float32, L2-normalised embeddings of what must not be detected (M may be 0).
        model_hash: weights hash of the model that computed the embeddings.
        sources: JSON-serialisable description of the prompts used, e.g.
            ``{"kind": "text", "text": "dog"}`` or ``{"kind": "box", "image_sha256": ..., "box": [x1, y1, x2, y2]}``.
        namer_embedding: ``(E,)`` float32, L2-normalised: the exemplars' region embedding by the detector's
            region namer (:mod:`regionprompt.detect.region_namer`), kept for concepts of exemplars drawn on
            other images when the detector has a namer; ``None`` otherwise.
    """

    name: str
    embedding: torch.Tensor
    model_hash: str
    negatives: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    sources: tuple[dict[str, Any], ...] = ()
    namer_embedding: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise PromptError("a concept needs a non-empty name")
        if self.namer_embedding is not None and self.namer_embedding.ndim != 1:
            raise PromptError(f"concept {self.name!r}: namer_embedding must be 1-d, got shape "
                              f"{tuple(self.namer_embedding.shape)}")
        if self.embedding.ndim != 1:
            raise PromptError(f"concept {self.name!r}: embedding must be 1-d, got shape {tuple(self.embedding.shape)}")
        if self.negatives.numel() == 0:
            object.__setattr__(self, "negatives", self.embedding.new_zeros((0, self.embedding.shape[0])))
        elif self.negatives.ndim != 2 or self.negatives.shape[1] != self.embedding.shape[0]:
            raise PromptError(f"concept {self.name!r}: negatives must be (M, {self.embedding.shape[0]}), "
                              f"got {tuple(self.negatives.shape)}")

    def __repr__(self) -> str:
        """One line (the embedding's floats are no summary)."""
        kinds = ", ".join(str(s.get("kind", "?")) for s in self.sources) or "no sources"
        return (f"PromptConcept(name={self.name!r}, dim={self.dim}, negatives={len(self.negatives)}, "
                f"model_hash={self.model_hash[:12]!r}, sources: {kinds})")

    def renamed(self, name: str) -> PromptConcept:
        """The same concept under another name (every embedding and source kept)."""
        return replace(self, name=name)

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write this concept to a ``.safetensors`` concept file (what ``regionprompt concept export``
        writes; :func:`regionprompt.concepts.files.save_concept`); returns the path."""
        from regionprompt.concepts.files import save_concept

        return save_concept(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PromptConcept:
        """Read a concept file (``save``, ``concept export``, the server's download).

        Raises:
            ConceptFileError: missing, unreadable, corrupt or not a concept file.
        """
        from regionprompt.concepts.files import load_concept

        return load_concept(path)

    def check_model(self, model_hash: str) -> None:
        """Refuse use with a model other than the one that made this concept."""
        if model_hash != self.model_hash:
            raise PromptError(f"concept {self.name!r} was made by model {self.model_hash[:12]}, not by the loaded "
                              f"model {model_hash[:12]}; recreate it with this model")
