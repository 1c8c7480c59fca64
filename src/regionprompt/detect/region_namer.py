"""Text categories named by a RegionCLIP region encoder on T-Rex2's boxes (RegionCLIP's handoff at inference).

T-Rex2 localises well -- given a box on an object it finds its other instances at ~80 % AP50 -- but,
trained on base-concept boxes only, it names poorly from text across a 1,177-name vocabulary. The
RegionCLIP student learned region-text alignment from captions (novel concepts included) and names
ground-truth boxes several times better than T-Rex2 names its own. The namer joins the two:

1. T-Rex2 runs as usual, its queries selected by every prompt;
2. for the categories with a name -- text alone, or text and exemplars (mixed) -- and no exemplar
   negatives, the final query boxes become the proposals of a RegionCLIP zero-shot detector, each with
   T-Rex2's best score over those categories as its objectness (for a mixed category T-Rex2's score
   already holds its exemplars);
3. RegionCLIP scores each proposal against the category phrases (softmax with a background, over the
   categories of the call) and keeps ``sqrt(p * objectness)``, per-category NMS, as its zero-shot
   detector does with RPN proposals; a negative phrase drops a box that is closer to it than to the
   category (the zero-shot detector's rule, on the region embedding).

Categories given by exemplars alone (interactive, generic) or with exemplar negatives keep T-Rex2's
own scores: there its prompt encoder is the better tool. Saved concepts are routed by their recorded
sources: a concept with phrases (and no exemplar negatives) is named by its phrases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regionprompt.concept import PromptConcept
from regionprompt.detect.prompting import TEXT_KIND
from regionprompt.detect.regionclip.zeroshot import ZeroShotDetector
from regionprompt.images import LoadedImage
from regionprompt.prompts import PromptCategory, TextPrompt
from regionprompt.proposals import Proposals
from regionprompt.results import Detections


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
    def name(self, images: Sequence[LoadedImage], boxes: Sequence[torch.Tensor], objectness: Sequence[torch.Tensor],
             categories: Sequence[PromptCategory], threshold: float) -> list[Detections]:
        """Per image: ``boxes`` ``(Q, 4)`` xyxy pixels with ``objectness`` ``(Q,)`` in [0, 1] -> detections of
        ``categories`` (labels index ``categories``). One call: the phrases are embedded once."""
        proposals = []
        for box, obj in zip(boxes, objectness):
            # Only the best boxes are named: pooling a region (res5 + attention pool) is most of the namer's
            # time, and low-objectness queries rarely survive sqrt(p * objectness) anyway.
            order = obj.argsort(descending=True)[: self.config.max_proposals]
            proposals.append(Proposals(box[order].float(), obj[order].float().clamp(0, 1)))
        return self.detector.detect(list(images), categories, proposals=proposals, threshold=threshold)


__all__ = ["RegionNamer", "concept_phrases", "named_by_text", "named_categories"]
