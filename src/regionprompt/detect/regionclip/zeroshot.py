"""Zero-shot RegionCLIP detection: proposals -> region embeddings -> cosine with prompt embeddings.

For each image: class-agnostic proposals (any :class:`~regionprompt.proposals.ProposalSource`,
or boxes the caller gives, whose objectness is 1) are embedded by the region encoder
(:class:`~regionprompt.detect.regionclip.regions.RegionEncoder`); each region ``r`` and category ``c``
(:mod:`~regionprompt.detect.regionclip.prompting` builds their embeddings) get the cosine ``s_rc``;
class probabilities are a softmax of ``s / T`` (RegionCLIP, T = 0.01); the score is
``sqrt(p_rc * objectness_r)`` (RegionCLIP's combination with the RPN; with proposals that carry
``class_scores``, ``sqrt(p_rc * class_score_rc)``); then threshold, negatives, per-class NMS and top-k.

Background (``ZeroShotConfig.background``):

* ``"none"``: the softmax runs over the prompt categories only -- the paper's protocol for a full
  vocabulary. With one or two prompts every region then belongs to some prompt.
* ``"text"``: one extra background class whose embedding is the text embedding of
  ``background_texts``: ``p_rc = exp(s_rc/T) / (sum_j exp(s_rj/T) + exp(s_rb/T))``.
* ``"auto"`` (default): as ``"text"``, but each category's background is built like its own embedding
  -- the background text for its text part, the searched image's whole-image region embedding for its
  visual part, averaged for mixed prompts -- because region-to-region cosines (visual prompts) run far
  higher than region-to-text cosines (CLIP's modality gap), so a text background would never win
  against a visual prompt. ``p_rc = exp(s_rc/T) / (sum_j exp(s_rj/T) + exp(s_rb_c/T))``.
* ``"learned"``: one background class whose embedding ``b`` (``(D,)``, not normalised: its length is
  learned too) was trained with the region encoder by open-vocabulary transfer
  (:mod:`regionprompt.train.ov_transfer`, RegionCLIP's detector fine-tuning):
  ``p_rc = exp(s_rc/T) / (sum_j exp(s_rj/T) + exp(r.b/T))`` with ``r`` the normalised region embedding,
  exactly the classifier it was trained as. Needs the detector's ``background_embedding``
  (``background.safetensors`` of a detector folder); only meaningful with the CLIP it was trained with
  and with text prompts (a learned background sits on the region-to-text cosine scale).

Negative prompts: a candidate of category ``c`` is dropped when its region is closer (cosine) to one of
``c``'s negative embeddings than to ``c``'s own embedding. Compare like with like: a negative of the
other modality sits on another cosine scale (see above), so pair text negatives with text prompts
and exemplar negatives with exemplar or mixed prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from PIL import Image

from regionprompt.boxes import as_box_tensor
from regionprompt.concept import PromptConcept
from regionprompt.detect.postprocess import select_detections, suppressed_by_negatives
from regionprompt.detect.prompting import CategoryRecipe, concept_modalities, mean_embedding
from regionprompt.detect.regionclip.prompting import CompiledPrompts, PromptCompiler
from regionprompt.detect.regionclip.regions import RegionEncoder
from regionprompt.errors import BoxFormatError, CheckpointError, RegionPromptError
from regionprompt.images import LoadedImage, load_image, to_tensor
from regionprompt.prompts import PromptCategory, validate_visual_prompts
from regionprompt.proposals import Proposals, ProposalSource
from regionprompt.results import Detections
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder

#: Background modes that work with any CLIP model (nothing trained besides the CLIP).
BACKGROUND_MODES = ("auto", "text", "none")
#: The background mode of a detector trained by open-vocabulary transfer (a learned ``(D,)`` embedding).
LEARNED_BACKGROUND = "learned"
#: Every value ``ZeroShotConfig.background`` accepts.
ALL_BACKGROUND_MODES = (*BACKGROUND_MODES, LEARNED_BACKGROUND)


@dataclass(frozen=True)
class ZeroShotConfig:
    """How the zero-shot detector scores regions (saved in a detector folder's ``detector.json``)."""

    temperature: float = 0.01  # cosine / T before the softmax (RegionCLIP: 0.01)
    background: str = "auto"  # "auto" | "text" | "none" | "learned" (module docstring)
    background_texts: tuple[str, ...] = ("background",)  # phrases whose text embedding is "not an object"
    templates: str = "emoji"  # prompt template set for text prompts ("emoji" for EmojiWorld models)
    input_size: int | None = None  # square model input side; None: the CLIP card's image_size
    max_proposals: int = 300  # proposals asked from the proposal source per image
    nms_iou: float = 0.5  # per-class NMS IoU
    max_detections: int = 100  # detections kept per image after NMS
    point_box_fraction: float = 0.15  # a point with no proposal around it: square of this x shorter side
    batch_size: int = 4  # images per backbone forward pass
    score_threshold: float = 0.3  # default threshold of predict() with this model

    def __post_init__(self) -> None:
        object.__setattr__(self, "background_texts", tuple(self.background_texts))
        problems = []
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.background not in ALL_BACKGROUND_MODES:
            problems.append(f"background must be one of {ALL_BACKGROUND_MODES}, got {self.background!r}")
        # "learned" uses no phrase, so it may go without them like "none".
        if self.background not in ("none", LEARNED_BACKGROUND) and not self.background_texts:
            problems.append("background_texts must not be empty unless background is 'none' or 'learned'")
        if self.input_size is not None and self.input_size < 32:
            problems.append(f"input_size must be >= 32, got {self.input_size}")
        if min(self.max_proposals, self.max_detections, self.batch_size) < 1:
            problems.append("max_proposals, max_detections and batch_size must be positive")
        if not 0 <= self.score_threshold <= 1:
            problems.append(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0 < self.nms_iou <= 1 or not 0 < self.point_box_fraction <= 1:
            problems.append("nms_iou and point_box_fraction must be in (0, 1]")
        if problems:
            raise ValueError("invalid zero-shot config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["background_texts"] = list(self.background_texts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZeroShotConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown zero-shot config keys {unknown}")
        return cls(**data)


def _loaded(image: Any) -> LoadedImage:
    return image if isinstance(image, LoadedImage) else load_image(image)


def _given(proposals: Sequence[Any], images: Sequence[LoadedImage]) -> list[Proposals]:
    """Caller-given boxes per image -> :class:`Proposals` (objectness 1 unless given)."""
    if len(proposals) != len(images):
        raise BoxFormatError(f"got proposals for {len(proposals)} images but {len(images)} images")
    out = []
    for item, image in zip(proposals, images):
        if isinstance(item, Proposals):
            out.append(item)
            continue
        boxes = as_box_tensor(item, what=f"given boxes of {image.name}")
        if len(boxes) and not ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all():
            raise BoxFormatError(f"given boxes of {image.name}: every box needs x1 < x2 and y1 < y2")
        out.append(Proposals(boxes, torch.ones(len(boxes))))
    return out


class ZeroShotDetector:
    """RegionCLIP zero-shot detection with text, visual (box / point) and mixed prompts.

    Args:
        model: the CLIP model (region encoder + text encoder); its weights hash keys concepts.
        proposals: where proposals come from; ``None``: callers must give boxes (``proposals=``).
        config: scoring settings.
        cache: persistent text-embedding cache (``None``: recompute every call).
        background_embedding: ``(D,)`` learned background embedding (open-vocabulary transfer), used by
            ``background="learned"`` and kept (unused) under the other modes so that
            :meth:`~regionprompt.api.Detector.reconfigure` can switch back to it.

    Raises:
        CheckpointError: ``background="learned"`` without a background embedding, or one whose shape
            does not match the model's embedding size or that holds inf / NaN.
    """

    def __init__(self, model: RegionPromptCLIP, proposals: ProposalSource | None = None,
                 config: ZeroShotConfig | None = None, *, cache: EmbeddingCache | None = None,
                 background_embedding: torch.Tensor | None = None) -> None:
        self.model = model.eval()
        self.config = config or ZeroShotConfig()
        self.background_embedding = self._checked_background(background_embedding, model.embed_dim)
        if self.config.background == LEARNED_BACKGROUND and self.background_embedding is None:
            raise CheckpointError(
                "background 'learned' needs the learned background embedding of an open-vocabulary-transfer "
                "detector (background.safetensors of a folder written by `regionprompt train detector --arch "
                "regionclip`); this detector has none: use background 'auto', 'text' or 'none'"
            )
        self.proposal_source = proposals
        self.regions = RegionEncoder(model, input_size=self.config.input_size)
        self.embedder = PromptEmbedder(model.text_encoder(), templates=self.config.templates, cache=cache)
        self.compiler = PromptCompiler(
            self.embedder,
            self.regions.embed,
            (lambda image: self.propose([image])[0]) if proposals is not None else None,
            self.config.point_box_fraction,
        )
        self.model_hash = model.card.weights_hash or model.weights_hash()

    @staticmethod
    def _checked_background(embedding: torch.Tensor | None, dim: int) -> torch.Tensor | None:
        """``(D,)`` float32 CPU copy of ``embedding`` (regions are scored on the CPU), or ``None``."""
        if embedding is None:
            return None
        embedding = torch.as_tensor(embedding).detach()
        if embedding.shape != (dim,):
            raise CheckpointError(f"the learned background embedding has shape {tuple(embedding.shape)}, "
                                  f"but the CLIP model embeds regions in {dim} dimensions")
        if not torch.isfinite(embedding).all():
            raise CheckpointError("the learned background embedding holds inf or NaN")
        return embedding.float().cpu()

    # ---- proposals -------------------------------------------------------------------------------

    def proposal_input_size(self) -> int:
        """Square side the proposal source gets: its own (``input_size`` or ``card.image_size``), else the CLIP input."""
        source = self.proposal_source
        size = getattr(source, "input_size", None) or getattr(getattr(source, "card", None), "image_size", None)
        return int(size or self.regions.input_size)

    def propose(self, images: Sequence[Image.Image]) -> list[Proposals]:
        """Proposals of RGB images, boxes in each image's own pixels."""
        if self.proposal_source is None:
            raise RegionPromptError("this detector has no proposal network: give the boxes to classify (proposals=...)")
        size = self.proposal_input_size()
        pixels = torch.stack([to_tensor(im.resize((size, size), Image.BILINEAR)) for im in images])
        found = self.proposal_source.propose(pixels, max_proposals=self.config.max_proposals)
        out = []
        for image, p in zip(images, found):
            width, height = image.size
            scale = torch.tensor([width / size, height / size] * 2)
            out.append(Proposals(p.boxes.float().cpu() * scale, p.objectness.float().cpu()))
        return out

    # ---- prompts ---------------------------------------------------------------------------------

    def make_concepts(self, categories: Sequence[PromptCategory]) -> list[PromptConcept]:
        """Reusable concepts of this model, one per category (exemplars must name their images)."""
        return self.compiler.concepts(categories, self.model_hash)

    # ---- detection -------------------------------------------------------------------------------

    def detect(self, images: Sequence[Any], categories: Sequence[PromptCategory] = (),
               concepts: Sequence[PromptConcept] = (), *, proposals: Sequence[Any] | None = None,
               threshold: float = 0.3) -> list[Detections]:
        """Detect the prompted categories on each image.

        Args:
            images: anything :func:`~regionprompt.images.load_image` accepts, or :class:`LoadedImage` s.
            categories: prompt categories (:func:`~regionprompt.prompts.group_prompts`); visual prompts
                with ``image=None`` are drawn on each searched image.
            concepts: saved concepts of this model, detected after ``categories``.
            proposals: boxes to classify instead of the proposal source's, one entry per image:
                :class:`Proposals` or ``(K, 4)`` xyxy pixel boxes (objectness 1).
            threshold: minimum score ``sqrt(p * objectness)``.
        Returns:
            One :class:`Detections` per image (boxes in that image's pixels), names = category names.
        Raises:
            PromptError: no prompt, duplicate names, a prompt outside its image, a concept of another model.
        """
        loaded = [_loaded(image) for image in images]
        for concept in concepts:
            concept.check_model(self.model_hash)
        prompts = [p for c in categories for p in (*c.visuals, *c.negatives)]
        for image in loaded:
            validate_visual_prompts(prompts, image.wh)
        # The background phrases are needed unless no category has a text part ("auto" with exemplars only).
        needs_text = self.config.background == "text" or (self.config.background == "auto" and (
            any(c.texts for c in categories) or any(concept_modalities(c)[0] for c in concepts)))
        compiled = self.compiler.compile(categories, concepts, self.config.background_texts if needs_text else ())
        given = _given(proposals, loaded) if proposals is not None else None
        if given is None and self.proposal_source is None:
            raise RegionPromptError("this detector has no proposal network: give the boxes to classify (proposals=...)")
        out: list[Detections] = []
        step = self.config.batch_size
        for start in range(0, len(loaded), step):
            chunk = loaded[start : start + step]
            maps = self.regions.feature_maps(self.regions.pixels([im.image for im in chunk]))
            found = given[start : start + step] if given is not None else self.propose([im.image for im in chunk])
            for image, fmap, props in zip(chunk, maps, found):
                out.append(self._detect_one(image, fmap, props, compiled, threshold))
        return out

    def _detect_one(self, image: LoadedImage, fmap: torch.Tensor, proposals: Proposals, compiled: CompiledPrompts,
                    threshold: float) -> Detections:
        cfg = self.config
        recipes = compiled.recipes
        names = [r.name for r in recipes]
        prompts = tuple(r.prompt for r in recipes)
        wh = image.wh
        if len(proposals) == 0:
            return Detections.empty(names, wh, prompts=prompts, image_name=image.name)
        # Everything pooled on this image in one call: proposals, the image's own exemplars and
        # negatives, and the whole image (the visual background).
        boxes = [proposals.boxes.float()]
        spans: list[tuple[int, int, int]] = []
        offset = len(proposals)
        for recipe in recipes:
            own = [self.compiler.prompt_box(p, wh, proposals) for p in (*recipe.interactive, *recipe.interactive_negatives)]
            if own:
                boxes.append(torch.stack(own))
            spans.append((offset, offset + len(recipe.interactive), offset + len(own)))
            offset += len(own)
        boxes.append(torch.tensor([[0.0, 0.0, float(wh[0]), float(wh[1])]]))
        pooled = self.regions.pool(fmap, torch.cat(boxes), wh).cpu()
        regions, whole = pooled[: len(proposals)], pooled[-1]
        finished = [r.finish(pooled[a:b], pooled[b:c]) for r, (a, b, c) in zip(recipes, spans)]
        embeddings = torch.stack([e for e, _ in finished])  # (C, D)
        sims = regions @ embeddings.t()  # (K, C)
        logits = sims / cfg.temperature
        if cfg.background == "none":
            log_p = logits.log_softmax(dim=1)
        elif cfg.background == LEARNED_BACKGROUND:
            # One background logit per region, shared by every category: the classifier it was trained as.
            background_logits = (regions @ self.background_embedding)[:, None] / cfg.temperature  # (K, 1)
            log_p = logits - torch.logaddexp(logits.logsumexp(dim=1, keepdim=True), background_logits)
        else:
            backgrounds = self._backgrounds(recipes, compiled, whole)  # (C, D)
            background_logits = (regions @ backgrounds.t()) / cfg.temperature
            log_p = logits - torch.logaddexp(logits.logsumexp(dim=1, keepdim=True), background_logits)
        prior = proposals.objectness[:, None] if proposals.class_scores is None else proposals.class_scores
        if prior.shape[1] not in (1, len(recipes)):
            raise RegionPromptError(f"proposals carry class scores for {prior.shape[1]} categories, not {len(recipes)}")
        scores = (log_p.exp() * prior.float().clamp(0, 1)).sqrt()
        # A region goes to no category whose negative prompt it is closer to (cosine) than to the category.
        suppressed = suppressed_by_negatives(sims, [regions @ negatives.t() for _, negatives in finished])
        boxes = proposals.boxes.float()
        rows, cols = select_detections(boxes, scores, threshold, suppressed=suppressed, nms_iou=cfg.nms_iou,
                                       max_detections=cfg.max_detections)
        return Detections(boxes[rows], scores[rows, cols], cols, names, wh, prompts=prompts, image_name=image.name)

    def _backgrounds(self, recipes: Sequence[CategoryRecipe], compiled: CompiledPrompts,
                     whole_image: torch.Tensor) -> torch.Tensor:
        """``(C, D)`` background embedding per category (module docstring)."""
        text = None
        if compiled.extra_texts:
            text = mean_embedding(torch.stack([compiled.extra_texts[t] for t in self.config.background_texts]))
        if self.config.background == "text":
            return text.expand(len(recipes), -1)
        rows = []
        for recipe in recipes:
            parts = ([text] if recipe.has_text else []) + ([whole_image] if recipe.has_visual else [])
            rows.append(mean_embedding(torch.stack(parts)))
        return torch.stack(rows)


__all__ = ["ALL_BACKGROUND_MODES", "BACKGROUND_MODES", "LEARNED_BACKGROUND", "ZeroShotConfig", "ZeroShotDetector"]
