"""Prompt embeddings of the zero-shot RegionCLIP detector: text, visual exemplars, mixed, negatives (the
recipes, concept records and checks it shares with T-Rex2 are :mod:`regionprompt.detect.prompting`).

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from regionprompt.concept import PromptConcept
from regionprompt.detect.prompting import (
    CategoryRecipe,
    ImageKeys,
    check_concept_prompts,
    check_unique_names,
    concept_recipe,
    concept_sources,
    image_fingerprint,
    load_source,
    mean_embedding,
    source_record,
)
from regionprompt.errors import PromptError
from regionprompt.prompts import (
    BoxPrompt,
    PointPrompt,
    PromptCategory,
    TextPrompt,
    VisualPrompt,
)
from regionprompt.proposals import Proposals
from regionprompt.vl.embeddings import PromptEmbedder

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


