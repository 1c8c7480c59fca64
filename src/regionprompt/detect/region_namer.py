"""Text categories named by a RegionCLIP region encoder on T-Rex2's boxes (RegionCLIP's handoff at inference).

T-Rex2 localises well -- given a box on an object it finds its other instances at ~80 % AP50 -- but,
trained on base-concept boxes only, it names poorly from text across a 1,177-name vocabulary. The
RegionCLIP student learned region-text alignment from captions (novel concepts included) and names
ground-truth boxes several times better than T-Rex2 names its own. The namer joins the two:

1. T-Rex2 runs as usual, its queries selected by every prompt;
2. for the categories with a name -- text alone, or text and exemplars (mixed) -- and no exemplar
   negatives, the 30 query boxes with the best T-Rex2 score over those categories become the proposals
   of a RegionCLIP zero-shot detector, each carrying T-Rex2's own score ``s`` for every category as its
   per-category objectness (for a mixed category T-Rex2's score already holds its exemplars);
3. RegionCLIP scores each proposal against the category phrases (softmax with a background, over the
   categories of the call) and keeps ``sqrt(p * s)``, per-category NMS, as its zero-shot detector does
   with RPN proposals and their objectness; a negative phrase drops a box that is closer to it than to
   the category (the zero-shot detector's rule, on the region embedding). T-Rex2's per-category score,
   rather than its best score over all categories, lifts val text AP50 from 19.0 to 20.8 (offline
   scoring of the same boxes): the two namers err on different names.

Exemplars drawn on *other* images (the generic workflow) are matched by both: T-Rex2 scores its query
boxes against the exemplars' prompt embedding, the namer pools the exemplar boxes on their images
(their mean region embedding, which a concept of such exemplars keeps as ``namer_embedding``) and the
30 best query boxes on the searched image; each box gets ``p`` = a softmax over the call's exemplar
categories and the searched image's whole-image region (the visual background), at
:data:`EXEMPLAR_TEMPERATURE`, and keeps ``sqrt(p * s)`` with ``s`` T-Rex2's own score for that category.
On EmojiWorld val (K = 5 exemplars from other scenes, whole vocabulary) AP50 goes from 10.7 (T-Rex2
alone) to 15.9, novel 7.1 -> 18.3: the namer's region features carry concepts that T-Rex2, trained on
base boxes only, never saw.

Categories given by exemplars on the searched image (interactive) or with negatives keep T-Rex2's own
scores: there its prompt encoder is the better tool. Saved concepts are routed by their recorded
sources: a concept with phrases (and no exemplar negatives) is named by its phrases; one with a
``namer_embedding`` (and no negatives) is matched by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regionprompt.concept import PromptConcept
from regionprompt.detect.postprocess import select_detections
from regionprompt.detect.prompting import TEXT_KIND
from regionprompt.detect.regionclip.zeroshot import ZeroShotDetector
from regionprompt.errors import PromptError
from regionprompt.images import LoadedImage
from regionprompt.prompts import PromptCategory, TextPrompt
from regionprompt.proposals import Proposals
from regionprompt.results import Detections

#: Softmax temperature of region-to-exemplar cosines (they run higher than region-to-text ones); chosen on
#: EmojiWorld val among 0.01-0.05 (AP50 15.0-15.9, flat from 0.02 to 0.03).
EXEMPLAR_TEMPERATURE = 0.02


def named_by_text(category: PromptCategory) -> bool:
    """A category with phrases (text or mixed) and no exemplar negatives: the namer's to score."""
    return bool(category.texts) and all(isinstance(n, TextPrompt) for n in category.negatives)


def concept_phrases(concept: PromptConcept) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (positive, negative) phrases of a concept with phrases and no exemplar negatives (its
    recorded sources); ``((), ())`` otherwise."""
    sources = concept.sources
    if any(s.get("negative") and s.get("kind") != TEXT_KIND for s in sources):
        return (), ()
    positive = tuple(str(s["text"]) for s in sources if s.get("kind") == TEXT_KIND and not s.get("negative"))
    negative = tuple(str(s["text"]) for s in sources if s.get("kind") == TEXT_KIND and s.get("negative"))
    return (positive, negative) if positive else ((), ())


def named_categories(categories: Sequence[PromptCategory], concepts: Sequence[PromptConcept]
                     ) -> tuple[list[int], list[PromptCategory]]:
    """Which of the recipes (categories, then concepts) the namer scores, and their text categories."""
    index, named = [], []
    for i, category in enumerate(categories):
        if named_by_text(category):
            index.append(i)
            named.append(PromptCategory(category.name, texts=category.texts, negatives=category.negatives))
    for j, concept in enumerate(concepts):
        positive, negative = concept_phrases(concept)
        if positive:
            index.append(len(categories) + j)
            named.append(PromptCategory(concept.name, texts=tuple(TextPrompt(p) for p in positive),
                                        negatives=tuple(TextPrompt(p, negative=True) for p in negative)))
    return index, named


def matched_by_exemplars(category: PromptCategory) -> bool:
    """Exemplars drawn on other images only (the generic workflow), no text, no negatives: the namer
    matches them beside T-Rex2."""
    return (bool(category.visuals) and not category.texts and not category.negatives
            and all(p.image is not None for p in category.visuals))


def concept_matched(concept: PromptConcept) -> bool:
    """A saved concept the namer matches by its exemplars' region embedding."""
    return concept.namer_embedding is not None and len(concept.negatives) == 0 and not concept_phrases(concept)[0]


class RegionNamer:
    """Scores T-Rex2's query boxes for text categories with a RegionCLIP zero-shot detector (module docstring)."""

    def __init__(self, detector: ZeroShotDetector) -> None:
        self.detector = detector

    @property
    def config(self):
        return self.detector.config

    @property
    def model(self):
        return self.detector.model

    @torch.no_grad()
    def name(self, images: Sequence[LoadedImage], boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
             categories: Sequence[PromptCategory], threshold: float) -> list[Detections]:
        """Per image: ``boxes`` ``(Q, 4)`` xyxy pixels with T-Rex2's ``scores`` ``(Q, C)`` in [0, 1] for the C
        ``categories`` (or ``(Q,)``: one objectness for all) -> detections of ``categories`` (labels index
        ``categories``). One call: the phrases are embedded once."""
        proposals = []
        for box, score in zip(boxes, scores):
            score = score.float().clamp(0, 1)
            objectness = score.max(dim=1).values if score.ndim == 2 else score
            order = self._best(objectness)
            proposals.append(Proposals(box[order].float(), objectness[order],
                                       score[order] if score.ndim == 2 else None))
        return self.detector.detect(list(images), categories, proposals=proposals, threshold=threshold)

    def _best(self, objectness: torch.Tensor) -> torch.Tensor:
        """Indices of the ``max_proposals`` most object-like queries, best first. Only those are scored:
        pooling a region (res5 + attention pool) is most of the namer's time, and low-objectness queries
        rarely survive ``sqrt(p * s)`` anyway."""
        return objectness.argsort(descending=True)[: self.config.max_proposals]

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    def embed_exemplars(self, categories: Sequence[PromptCategory]) -> list[torch.Tensor]:
        """One ``(E,)`` L2-normalised mean region embedding per category of exemplars on other images."""
        visual = [PromptCategory(c.name, visuals=c.visuals) for c in categories]
        return [c.embedding for c in self.detector.make_concepts(visual)]

    def check_embedding(self, concept: PromptConcept) -> torch.Tensor:
        """The concept's namer embedding, refused when another namer made it (its size differs)."""
        embedding = concept.namer_embedding
        if embedding is None or embedding.shape[0] != self.dim:
            raise PromptError(f"concept {concept.name!r}: its namer embedding does not fit this detector's namer; "
                              "recreate the concept with this detector")
        return embedding.float()

    @torch.no_grad()
    def match(self, images: Sequence[LoadedImage], boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
              embeddings: torch.Tensor, names: Sequence[str], threshold: float) -> list[Detections]:
        """Per image: query ``boxes`` ``(Q, 4)`` xyxy pixels and T-Rex2's ``scores`` ``(Q, C)`` for the C
        exemplar categories with namer ``embeddings`` ``(C, E)`` -> detections scored ``sqrt(p * s)``
        (module docstring; labels index ``names``)."""
        regions = self.detector.regions
        cfg = self.config
        maps = regions.feature_maps(regions.pixels([im.image for im in images]))
        out = []
        for image, fmap, box, score in zip(images, maps, boxes, scores):
            order = self._best(score.max(dim=1).values)
            box, score = box[order].float(), score[order].float()
            width, height = image.wh
            pooled = regions.pool(fmap, torch.cat([box, torch.tensor([[0.0, 0.0, float(width), float(height)]])]),
                                  image.wh).cpu()
            logits = torch.cat([pooled[:-1] @ embeddings.t(), pooled[:-1] @ pooled[-1:].t()], dim=1)
            p = (logits / EXEMPLAR_TEMPERATURE).softmax(dim=1)[:, :-1]  # the last column: background
            fused = (p * score.clamp(0, 1)).sqrt()
            rows, cols = select_detections(box, fused, threshold, nms_iou=cfg.nms_iou, max_detections=cfg.max_detections)
            out.append(Detections(box[rows], fused[rows, cols], cols, tuple(names), image.wh, image_name=image.name))
        return out


__all__ = ["EXEMPLAR_TEMPERATURE", "RegionNamer", "concept_matched", "concept_phrases", "matched_by_exemplars",
           "named_by_text", "named_categories"]
