"""Prompt embeddings of the zero-shot RegionCLIP detector: text, visual exemplars, mixed, negatives.

* A text prompt's embedding is its template-ensembled text embedding
  (:class:`~regionprompt.vl.embeddings.PromptEmbedder`, cached in SQLite); several phrases of one
  category are averaged.
* A visual prompt's embedding is the region embedding of its exemplar box: the same region encoder that
  embeds the proposals, so "find more like this" is a region-to-region cosine. Several exemplars of one
  category (on the searched image, on other images, or both) are averaged: mean of the L2-normalised
  embeddings, then L2-normalised.
* A point becomes a box first (:func:`box_for_point`): the proposal that contains the point with the
  highest objectness (ties: the smallest), because a proposal follows the object's extent, which a
  fixed-size box cannot know; with no proposal containing it (or no proposal source, for a point on
  another image in given-boxes mode), a square of ``point_box_fraction`` of the shorter image side
  centred on the point.
* A mixed category (text and exemplars) averages its text and visual embeddings, then normalises.

Exemplars drawn on the searched image (``image is None``) can only be embedded once that image is, so
:func:`compile_categories` returns per-category :class:`CategoryRecipe` s that the detector finishes per
image (:meth:`CategoryRecipe.finish`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
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
from regionprompt.proposals import Proposals
from regionprompt.vl.embeddings import PromptEmbedder

#: Source kinds written into :attr:`PromptConcept.sources` (``"negative": true`` marks negatives).
TEXT_KIND, BOX_KIND, POINT_KIND = "text", "box", "point"


def mean_embedding(vectors: torch.Tensor) -> torch.Tensor:
    """``(K, D)`` embeddings -> ``(D,)``: mean of the L2-normalised rows, L2-normalised."""
    return F.normalize(F.normalize(vectors, dim=-1).mean(dim=0), dim=-1)


def box_for_point(point: tuple[float, float], image_wh: tuple[int, int], proposals: Proposals | None,
                  fraction: float) -> torch.Tensor:
    """The ``(4,)`` xyxy pixel box a point prompt stands for (see the module docstring)."""
    x, y = point
    if proposals is not None and len(proposals):
        b = proposals.boxes
        inside = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
        if inside.any():
            index = inside.nonzero().flatten()
            area = (b[index, 2] - b[index, 0]) * (b[index, 3] - b[index, 1])
            # Highest objectness first; among equals (given boxes all have 1.0) the smallest box.
            order = sorted(range(len(index)), key=lambda i: (-float(proposals.objectness[index[i]]), float(area[i])))
            return b[index[order[0]]].clone()
    width, height = image_wh
    half = fraction * min(width, height) / 2
    return torch.tensor([max(0.0, x - half), max(0.0, y - half), min(float(width), x + half), min(float(height), y + half)])


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


@dataclass(frozen=True)
class CompiledPrompts:
    """What :meth:`PromptCompiler.compile` returns.

    Attributes:
        recipes: one per category, then one per concept.
        extra_texts: ``{phrase: (D,)}`` embeddings of the extra phrases asked for.
        visual_sources: ``id(prompt) -> source record`` of each exemplar drawn on another image.
    """

    recipes: list[CategoryRecipe]
    extra_texts: dict[str, torch.Tensor]
    visual_sources: dict[int, dict[str, Any]]


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


class PromptCompiler:
    """Turns prompt categories and concepts into :class:`CategoryRecipe` s.

    Args:
        embedder: text prompt embeddings (templates + cache).
        embed_regions: ``(image, (K, 4) xyxy pixel boxes) -> (K, D)`` normalised region embeddings.
        propose: ``image -> Proposals`` in that image's pixels, or ``None`` (points then use a square box).
        point_box_fraction: side of a point's fallback box, as a fraction of the shorter image side.
    """

    def __init__(self, embedder: PromptEmbedder, embed_regions: Callable[[Image.Image, torch.Tensor], torch.Tensor],
                 propose: Callable[[Image.Image], Proposals] | None, point_box_fraction: float) -> None:
        self.embedder = embedder
        self.embed_regions = embed_regions
        self.propose = propose
        self.point_box_fraction = point_box_fraction

    @property
    def dim(self) -> int:
        return self.embedder.embed_dim

    def texts(self, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{phrase: (D,)}`` normalised embeddings, one embedder call for all."""
        unique = list(dict.fromkeys(phrases))
        if not unique:
            return {}
        return dict(zip(unique, self.embedder.embed(unique)))

    def generic_visuals(self, prompts: Sequence[VisualPrompt]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Embeddings ``(D,)`` and source records of exemplars drawn on other images, in prompt order."""
        keys = ImageKeys()
        by_image: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_image.setdefault(keys.index(prompt.image), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(prompts)
        records: list[dict[str, Any]] = [{} for _ in prompts]
        for image_index, members in by_image.items():
            loaded = load_source(keys.sources[image_index])
            fingerprint = image_fingerprint(loaded.image)
            proposals = None
            if self.propose is not None and any(isinstance(prompts[i], PointPrompt) for i in members):
                proposals = self.propose(loaded.image)
            boxes = []
            for i in members:
                prompt = prompts[i]
                prompt.check_inside(loaded.wh)
                boxes.append(self.prompt_box(prompt, loaded.wh, proposals))
                records[i] = source_record(prompt, loaded.name, fingerprint)
            embedded = self.embed_regions(loaded.image, torch.stack(boxes))
            for i, vector in zip(members, embedded):
                out[i] = vector
        return [v for v in out if v is not None], records

    def prompt_box(self, prompt: VisualPrompt, image_wh: tuple[int, int], proposals: Proposals | None) -> torch.Tensor:
        """``(4,)`` xyxy pixel box of a box or point prompt."""
        if isinstance(prompt, BoxPrompt):
            return torch.tensor(prompt.box, dtype=torch.float32)
        return box_for_point(prompt.point, image_wh, proposals, self.point_box_fraction)

    def compile(self, categories: Sequence[PromptCategory], concepts: Sequence[PromptConcept] = (),
                extra_texts: Sequence[str] = ()) -> CompiledPrompts:
        """Recipes for ``categories`` then ``concepts`` (in that order), plus the text embeddings of
        ``extra_texts`` (e.g. background phrases), computed in the same embedder call.

        Raises:
            PromptError: nothing to detect, two categories with one name, a prompt outside its image.
        """
        if not categories and not concepts:
            raise PromptError("no prompt given: pass text, boxes, points or concepts")
        check_unique_names(categories, concepts)
        phrases = [t.text for c in categories for t in (*c.texts, *c.negatives) if isinstance(t, TextPrompt)]
        vectors = self.texts([*phrases, *extra_texts])
        generic = [v for c in categories for v in (*c.visuals, *c.negatives)
                   if isinstance(v, (BoxPrompt, PointPrompt)) and v.image is not None]
        generic_vectors, generic_records = self.generic_visuals(generic)
        by_prompt = {id(p): v for p, v in zip(generic, generic_vectors)}
        empty = torch.zeros(0, self.dim)

        def stack(items: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(items) if items else empty

        recipes = []
        for category in categories:
            texts = [vectors[t.text] for t in category.texts]
            negatives = [vectors[n.text] if isinstance(n, TextPrompt) else by_prompt[id(n)]
                         for n in category.negatives if isinstance(n, TextPrompt) or n.image is not None]
            recipes.append(CategoryRecipe(
                name=category.name,
                prompt=category,
                text=mean_embedding(torch.stack(texts)) if texts else None,
                visuals=stack([by_prompt[id(v)] for v in category.visuals if v.image is not None]),
                interactive=tuple(v for v in category.visuals if v.image is None),
                negatives=stack(negatives),
                interactive_negatives=tuple(n for n in category.negatives
                                            if not isinstance(n, TextPrompt) and n.image is None),
                fixed=None,
                has_text=bool(category.texts),
                has_visual=bool(category.visuals),
            ))
        recipes += [concept_recipe(concept, self.dim) for concept in concepts]
        return CompiledPrompts(recipes, {p: vectors[p] for p in extra_texts},
                               {id(p): r for p, r in zip(generic, generic_records)})

    def concepts(self, categories: Sequence[PromptCategory], model_hash: str) -> list[PromptConcept]:
        """Reusable :class:`PromptConcept` s, one per category, whose exemplars all name their image.

        Raises:
            PromptError: an exemplar drawn on "the searched image" (a concept has no searched image).
        """
        check_concept_prompts(categories)
        compiled = self.compile(categories)
        none = torch.zeros(0, self.dim)
        out = []
        for category, recipe in zip(categories, compiled.recipes):
            embedding, negatives = recipe.finish(none, none)
            out.append(PromptConcept(name=category.name, embedding=embedding.clone(), model_hash=model_hash,
                                     negatives=negatives.clone(),
                                     sources=concept_sources(category, compiled.visual_sources)))
        return out


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
