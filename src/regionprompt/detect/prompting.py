"""Prompt recipes shared by both detection engines (RegionCLIP zero-shot and T-Rex2).

A prompt category (text phrases, exemplars on other images or on the searched image, negatives) or a
saved concept becomes a :class:`CategoryRecipe`: what can be embedded before the searched image is
seen, finished per image (:meth:`CategoryRecipe.finish`) once that image's own exemplars are embedded.
How an engine embeds texts and exemplars is its own business (RegionCLIP: region embeddings of the
same encoder, :mod:`regionprompt.detect.regionclip.prompting`; T-Rex2: its visual prompt encoder); the
averaging rule (:func:`~regionprompt.vl.embeddings.mean_embedding`), the concept format of
:attr:`PromptConcept.sources` and the checks on names and concept prompts are shared here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from regionprompt.concept import PromptConcept
from regionprompt.errors import PromptError
from regionprompt.images import LoadedImage, describe_source, load_image
from regionprompt.prompts import (
    BoxPrompt,
    PointPrompt,
    PromptCategory,
    TextPrompt,
    VisualPrompt,
)
from regionprompt.vl.embeddings import mean_embedding

#: Source kinds written into :attr:`PromptConcept.sources` (``"negative": true`` marks negatives).
TEXT_KIND, BOX_KIND, POINT_KIND = "text", "box", "point"


def image_fingerprint(image: Image.Image) -> str:
    """sha256 of an RGB image's size and decoded pixels: the same picture in PNG or JPEG-free formats
    gives the same value, wherever it was read from."""
    h = hashlib.sha256(f"{image.size[0]}x{image.size[1]}".encode())
    h.update(image.convert("RGB").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CategoryRecipe:
    """One category's embeddings, before the searched image's own exemplars are added.

    Attributes:
        name: the category name (detection names).
        prompt: what it was asked with (a bare name for a concept).
        text: ``(D,)`` normalised text embedding, or ``None``.
        visuals: ``(V, D)`` embeddings of exemplars drawn on other images.
        interactive: exemplars drawn on the searched image, embedded per image.
        negatives: ``(M, D)`` embeddings of text negatives and negatives drawn on other images.
        interactive_negatives: negatives drawn on the searched image.
        fixed: a concept's finished ``(D,)`` embedding (then ``text`` and ``visuals`` are unused).
        has_text, has_visual: which modalities make up the embedding (decides its background).
    """

    name: str
    prompt: PromptCategory
    text: torch.Tensor | None
    visuals: torch.Tensor
    interactive: tuple[VisualPrompt, ...]
    negatives: torch.Tensor
    interactive_negatives: tuple[VisualPrompt, ...]
    fixed: torch.Tensor | None
    has_text: bool
    has_visual: bool

    def finish(self, interactive: torch.Tensor, interactive_negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The category's ``(D,)`` embedding and ``(M', D)`` negatives for one searched image.

        Args:
            interactive: ``(len(self.interactive), D)`` region embeddings of this image's exemplars.
            interactive_negatives: ``(len(self.interactive_negatives), D)`` likewise for negatives.
        """
        negatives = torch.cat([self.negatives, interactive_negatives])
        if self.fixed is not None:
            return self.fixed, negatives
        visuals = torch.cat([self.visuals, interactive])
        parts = []
        if self.text is not None:
            parts.append(self.text)
        if len(visuals):
            parts.append(mean_embedding(visuals))
        # Mixed prompts: text and visual embeddings weigh the same however many exemplars there are.
        return mean_embedding(torch.stack(parts)), negatives


def concept_modalities(concept: PromptConcept) -> tuple[bool, bool]:
    """``(has_text, has_visual)`` of a concept, read from its positive sources (text when unknown)."""
    kinds = {s.get("kind") for s in concept.sources if not s.get("negative")}
    has_visual = bool(kinds & {BOX_KIND, POINT_KIND})
    return (TEXT_KIND in kinds or not has_visual), has_visual


class ImageKeys:
    """Groups prompts by the image they were drawn on: paths by value, other sources by identity."""

    def __init__(self) -> None:
        self.keys: dict[Any, int] = {}
        self.sources: list[Any] = []

    def index(self, source: Any) -> int:
        key = ("path", os.fspath(Path(source))) if isinstance(source, (str, os.PathLike)) else ("object", id(source))
        if key not in self.keys:
            self.keys[key] = len(self.sources)
            self.sources.append(source)
        return self.keys[key]


def load_source(source: Any) -> LoadedImage:
    if isinstance(source, LoadedImage):
        return source
    return load_image(source)


def check_unique_names(categories: Sequence[PromptCategory], concepts: Sequence[PromptConcept]) -> None:
    """Refuse two categories (prompt labels and/or concepts) with one name: detections are named by category."""
    seen: set[str] = set()
    for name in [c.name for c in categories] + [c.name for c in concepts]:
        if name in seen:
            raise PromptError(f"category {name!r} is given twice (as a prompt label and/or a concept); "
                              "give each category one name")
        seen.add(name)


def concept_recipe(concept: PromptConcept, dim: int) -> CategoryRecipe:
    """The recipe of a saved concept: its finished embedding and negatives (``dim``: the model's)."""
    if concept.dim != dim:
        raise PromptError(f"concept {concept.name!r} has {concept.dim}-d embeddings, this model {dim}-d")
    has_text, has_visual = concept_modalities(concept)
    return CategoryRecipe(
        name=concept.name, prompt=PromptCategory(name=concept.name), text=None, visuals=torch.zeros(0, dim),
        interactive=(), negatives=F.normalize(concept.negatives.float(), dim=-1), interactive_negatives=(),
        fixed=F.normalize(concept.embedding.float(), dim=-1), has_text=has_text, has_visual=has_visual,
    )


def check_concept_prompts(categories: Sequence[PromptCategory]) -> None:
    """Refuse exemplars drawn on "the searched image" in a concept (a concept has no searched image)."""
    for category in categories:
        for prompt in (*category.visuals, *category.negatives):
            if isinstance(prompt, (BoxPrompt, PointPrompt)) and prompt.image is None:
                raise PromptError(f"concept {category.name!r}: visual prompts of a concept need the image they "
                                  "were drawn on (pass prompt_images)")


def concept_sources(category: PromptCategory, visual_sources: dict[int, dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The :attr:`PromptConcept.sources` of a category: its phrases, then its exemplars (``visual_sources``:
    ``id(prompt) -> source_record``), then its negatives marked ``"negative": true``."""
    sources = [{"kind": TEXT_KIND, "text": t.text} for t in category.texts]
    sources += [visual_sources[id(v)] for v in category.visuals]
    for n in category.negatives:
        sources.append({"kind": TEXT_KIND, "text": n.text, "negative": True} if isinstance(n, TextPrompt)
                       else {**visual_sources[id(n)], "negative": True})
    return tuple(sources)


def source_record(prompt: VisualPrompt, image_name: str, fingerprint: str) -> dict[str, Any]:
    """How a concept remembers an exemplar: kind, coordinates, image name and pixel fingerprint."""
    where = {"image": image_name if image_name else describe_source(prompt.image), "image_sha256": fingerprint}
    if isinstance(prompt, BoxPrompt):
        return {"kind": BOX_KIND, "box": list(prompt.box), **where}
    return {"kind": POINT_KIND, "point": list(prompt.point), **where}


__all__ = ["BOX_KIND", "POINT_KIND", "TEXT_KIND", "CategoryRecipe", "ImageKeys", "check_concept_prompts",
           "check_unique_names", "concept_modalities", "concept_recipe", "concept_sources", "image_fingerprint",
           "load_source", "mean_embedding", "source_record"]
