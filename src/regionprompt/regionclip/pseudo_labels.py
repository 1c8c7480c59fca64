"""Teacher pseudo labels for region-text pretraining (RegionCLIP step 4).

For each scene of a scene cache: proposals from any :class:`~regionprompt.proposals.ProposalSource`
-> the teacher's region embeddings (RoIAlign 14 x 14 on res4 -> res5 -> attention pool) -> cosine
against the concept-pool embeddings (the teacher's text side, template-ensembled) -> softmax at
``temperature`` -> regions whose best probability reaches ``threshold`` keep that concept as their
pseudo label, with the teacher's top-k concepts and probabilities. Results go to a sharded,
append-only store (:mod:`regionprompt.regionclip.label_store`) that a rerun resumes.

Two vocabularies (``PseudoLabelConfig.vocabulary``):

* ``"pool"`` (the paper): every proposal is classified against the whole pool; a region is kept when
  its best probability reaches ``threshold``.
* ``"caption"`` (grounded): an image's candidates are only the pool concepts its own captions mention;
  the softmax runs over those, and each mentioned concept labels the ``regions_per_concept`` proposals
  where it is most probable (if they reach ``threshold``). Measured on EmojiWorld with a weak teacher,
  this is the difference between pseudo labels that are noise and ones a student can learn from
  (docs/results.md). The stored top-k stays the teacher's whole-pool top-k (the distillation target).

Every image is processed alone (batch of one), because pooled region features depend, in the last
float bits, on how many regions share a batch: one image at a time makes a resumed run's shards
byte-identical to an uninterrupted run's whatever the interruption point.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regionprompt import __version__
from regionprompt.devices import resolve_device
from regionprompt.errors import RegionPromptError
from regionprompt.logging_utils import get_logger, progress_bar
from regionprompt.proposals import ProposalSource
from regionprompt.regionclip.label_store import (
    PartWriter,
    PseudoLabelWriter,
    empty_regions,
    merge_parts,
    pool_hash,
)
from regionprompt.regionclip.region_encoder import (
    concept_logits,
    embed_concepts,
    encode_regions,
)
from regionprompt.sharding import Shard
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache
from regionprompt.world.scene_cache import SceneCache

_log = get_logger("regionclip.pseudo_labels")

#: ``--pool`` value naming the world's own vocabulary (all EmojiWorld concept names) instead of a pool file.
EMOJIWORLD_POOL = "emojiworld"


def load_pool_names(pool: str | Path) -> tuple[list[str], str]:
    """Concept names and a source description from a concept-pool JSON file (``regionprompt concepts
    extract``) or :data:`EMOJIWORLD_POOL` (the 1,177 EmojiWorld concept names: an oracle vocabulary)."""
    if str(pool) == EMOJIWORLD_POOL:
        from regionprompt.world.concepts import load_concepts

        concepts = load_concepts()
        return list(concepts.names), f"EmojiWorld concepts {concepts.version}"
    from regionprompt.vl.concept_pool import ConceptPool

    loaded = ConceptPool.load(pool)
    return list(loaded.names), f"{Path(pool).name} ({loaded.source}, {loaded.backend}, min count {loaded.min_count})"


VOCABULARIES = ("pool", "caption")


class CaptionVocabulary:
    """Pool indices that an image's captions mention, parsed like the concept pool itself (noun
    phrases, matched to pool names with spaces ignored, so spelling variants meet)."""

    def __init__(self, pool_names: Sequence[str], backend: str = "rules") -> None:
        from regionprompt.vl.nouns import make_extractor

        self._extractor = make_extractor(backend)
        self._index = {name.replace(" ", ""): i for i, name in enumerate(pool_names)}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        """``(K,)`` int64 sorted pool indices mentioned by ``captions`` (empty when none is)."""
        found: set[int] = set()
        for phrases in self._extractor.extract(list(captions)):
            found.update(self._index[k] for k in (p.replace(" ", "") for p in phrases) if k in self._index)
        return torch.tensor(sorted(found), dtype=torch.int64)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """How pseudo labels are made (all of it is part of the store's identity)."""

    threshold: float = 0.1  # keep a region when the teacher's best probability is at least this (paper: 0.1)
    temperature: float = 0.01  # softmax temperature over cosine similarities (paper: 0.01)
    top_k: int = 5  # teacher concepts and probabilities stored per region
    max_proposals: int = 100  # proposals scored per image, most object-like first (paper: 300, 100 sampled)
    templates: str = "emoji"  # prompt templates of the concept embeddings
    input_size: int | None = None  # side of the image the teacher sees; None: the cache's size
    proposal_size: int | None = None  # side of the image the proposal source sees; None: the cache's size
    shard_images: int = 256  # images per shard (one manifest line each)
    vocabulary: str = "pool"  # "pool": whole pool per region (paper); "caption": the image's caption concepts
    regions_per_concept: int = 1  # "caption": proposals labelled per mentioned concept

    def validate(self) -> None:
        if self.vocabulary not in VOCABULARIES:
            raise RegionPromptError(f"vocabulary must be one of {VOCABULARIES}, got {self.vocabulary!r}")
        if self.regions_per_concept < 1:
            raise RegionPromptError(f"regions_per_concept must be >= 1, got {self.regions_per_concept}")
        if not 0.0 <= self.threshold <= 1.0:
            raise RegionPromptError(f"threshold must be in [0, 1], got {self.threshold}")
        if not self.temperature > 0:
            raise RegionPromptError(f"temperature must be > 0, got {self.temperature}")
        for name in ("top_k", "max_proposals", "shard_images"):
            if getattr(self, name) < 1:
                raise RegionPromptError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("input_size", "proposal_size"):
            value = getattr(self, name)
            if value is not None and value < 32:
                raise RegionPromptError(f"{name} must be >= 32 pixels, got {value}")


@dataclass(frozen=True)
class PseudoLabelRun:
    """What one call of :func:`pseudo_label` did.

    Attributes:
        directory: the pseudo-label folder.
        first_image, stop_image: images ``[first_image, stop_image)`` were labelled by this call.
        total_images: images covered by the folder now.
        proposals: regions the teacher scored in this call.
        regions: regions kept (pseudo-labelled) in this call.
        seconds: wall time of the labelling loop (model and embedding set-up excluded).
    """

    directory: Path
    first_image: int
    stop_image: int
    total_images: int
    proposals: int
    regions: int
    seconds: float
    shard_images: int | None = None  # a sharded call: the images it labelled (not one contiguous range)

    @property
    def images(self) -> int:
        return self.stop_image - self.first_image if self.shard_images is None else self.shard_images

    @property
    def regions_per_second(self) -> float:
        """Proposals scored by the teacher per second (the throughput of the teacher side)."""
        return self.proposals / self.seconds if self.seconds > 0 else 0.0


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


@torch.no_grad()
def label_image(teacher: RegionPromptCLIP, source: ProposalSource, image: np.ndarray, concept_emb: torch.Tensor,
                config: PseudoLabelConfig, candidates: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Pseudo labels of one image.

    Args:
        teacher: the frozen teacher (eval mode).
        source: proposal source.
        image: ``(S, S, 3)`` uint8, a scene-cache image.
        concept_emb: ``(C, D)`` normalised concept embeddings.
        candidates: ``(K,)`` pool indices the image's captions mention; required (and only used) with
            ``config.vocabulary == "caption"``.
    Returns:
        the kept regions' tensors (names and formats as in a shard, ``image_index`` zero-filled; boxes
        in pixels of ``image``) and the number of proposals scored.
    """
    size = image.shape[0]
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    proposal_size = config.proposal_size or size
    found = source.propose(_resize(pixels.to(_device_of(source)), proposal_size), max_proposals=config.max_proposals)[0]
    found = found.top(config.max_proposals)
    boxes = (found.boxes.float().cpu() * (size / proposal_size)).clamp_(0, size)
    if len(boxes) == 0:
        return empty_regions(config.top_k), 0
    input_size = config.input_size or size
    device = concept_emb.device  # the teacher's: the selection below runs on the CPU whatever the device
    region_emb = encode_regions(teacher, _resize(pixels.to(device), input_size), [(boxes * (input_size / size)).to(device)])
    logits = concept_logits(region_emb, concept_emb, config.temperature).cpu()
    top_prob, top_index = logits.softmax(dim=-1).topk(min(config.top_k, logits.shape[1]), dim=-1)
    if config.vocabulary == "pool":
        keep = torch.nonzero(top_prob[:, 0] >= config.threshold).flatten()
        concept = top_index[keep, 0]
    else:
        keep, concept = _caption_grounded(logits, candidates, config)
    out = {
        "image_index": torch.zeros(len(keep), dtype=torch.int64),
        "boxes": boxes[keep],
        "concept": concept,
        "topk_index": top_index[keep],
        "topk_prob": top_prob[keep].half(),
        "objectness": found.objectness[keep].float().cpu(),
    }
    return out, len(boxes)


def _device_of(source: ProposalSource) -> torch.device:
    """Where a proposal source wants its images: its parameters' device, the CPU for non-modules."""
    if isinstance(source, torch.nn.Module):
        first = next(source.parameters(), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def _caption_grounded(logits: torch.Tensor, candidates: torch.Tensor | None,
                      config: PseudoLabelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Regions and labels of the ``"caption"`` vocabulary: ``logits`` ``(R, C)`` over the whole pool ->
    per mentioned concept, the ``regions_per_concept`` regions where it is most probable among the
    mentioned concepts. Returns ``(keep, concept)``: region indices (sorted, a region may appear once
    per concept) and their pool indices."""
    if candidates is None:
        raise RegionPromptError("the caption vocabulary needs each image's caption concepts")
    if len(candidates) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    probs = logits[:, candidates].softmax(dim=-1)  # (R, K): each region over the caption's concepts
    n = min(config.regions_per_concept, probs.shape[0])
    best_prob, best_region = probs.topk(n, dim=0)  # (n, K)
    ok = best_prob >= config.threshold
    region = best_region[ok]
    concept = candidates.expand_as(best_region)[ok]
    order = torch.argsort(region * len(logits[0]) + concept)  # deterministic region-major order
    return region[order], concept[order]


def identity_of(teacher_hash: str, pool_names: Sequence[str], proposal_id: str, cache: SceneCache,
                config: PseudoLabelConfig) -> dict[str, Any]:
    """The settings a pseudo-label folder depends on (stored in ``meta.json``, compared on reruns)."""
    return {
        "teacher_hash": teacher_hash,
        "pool_hash": pool_hash(pool_names),
        "pool_size": len(pool_names),
        "proposals": proposal_id,
        "cache": asdict(cache.spec),
        **asdict(config),
    }


def pseudo_label(teacher: RegionPromptCLIP, source: ProposalSource, cache: SceneCache, pool_names: Sequence[str],
                 out_dir: str | Path, config: PseudoLabelConfig = PseudoLabelConfig(), *, proposal_id: str,
                 pool_source: str = "", max_images: int | None = None,
                 embedding_cache: EmbeddingCache | None = None, device: str | torch.device = "cpu",
                 shard: Shard | None = None) -> PseudoLabelRun:
    """Pseudo-label the images of ``cache`` into ``out_dir``, resuming where a previous run stopped.

    Args:
        teacher: the CLIP teacher (used frozen, in eval mode).
        source: any proposal source (the trained RPN, or oracle boxes).
        cache: the scene cache (``pretrain`` split); boxes are stored in its pixels.
        pool_names: the concept pool; pseudo labels index it.
        out_dir: the pseudo-label folder (see :mod:`~regionprompt.regionclip.label_store`).
        proposal_id: identifies ``source`` (e.g. a hash of the RPN's weights): part of the identity.
        max_images: label only images ``0 .. max_images - 1`` (a later call with more continues).
        embedding_cache: where concept embeddings persist between runs.
        device: where the teacher (and a proposal network) run; the stored labels do not depend on it
            beyond float rounding.
        shard: label only this shard's blocks of ``config.shard_images`` images into ``out_dir/parts``
            (:mod:`~regionprompt.regionclip.label_store`); a call without a shard merges the parts first.
    Raises:
        PseudoLabelError: ``out_dir`` holds labels made with other settings.
    """
    config.validate()
    device = resolve_device(device)
    names = list(pool_names)
    if not names or len(set(names)) != len(names):
        raise RegionPromptError(f"the concept pool must hold unique names; got {len(names)} names, {len(set(names))} distinct")
    if cache.spec.split != "pretrain":
        _log.warning("pseudo-labelling a %r scene cache; RegionCLIP pseudo-labels pretrain scenes", cache.spec.split)
    teacher.eval()
    identity = identity_of(teacher.weights_hash(), names, proposal_id, cache, config)
    info = {"teacher": teacher.card.name, "cache_dir": str(cache.directory), "regionprompt": __version__}
    writer = PseudoLabelWriter(out_dir, identity, info, names, pool_source)
    if shard is None and merge_parts(writer):
        _log.info("merged the parts of sharded jobs: the store covers %d images", writer.next_image)
    stop = len(cache) if max_images is None else min(len(cache), max_images)
    start = writer.next_image
    blocks = [(first, min(first + config.shard_images, stop)) for first in range(start, stop, config.shard_images)]
    part = None
    if shard is not None:
        part = PartWriter(out_dir, shard)
        blocks = [b for b in blocks if shard.owns(b[0] // config.shard_images) and b not in part.done]
    if not blocks:
        return PseudoLabelRun(writer.directory, start, start, writer.next_image, 0, 0, 0.0, None if shard is None else 0)
    concept_emb = embed_concepts(teacher, names, config.templates, embedding_cache)
    teacher.to(device)  # only after embedding: the embedding cache hashes the weights on the CPU
    if isinstance(source, torch.nn.Module):
        source.to(device)
    concept_emb = concept_emb.to(device)
    vocabulary = CaptionVocabulary(names) if config.vocabulary == "caption" else None
    if part is None:
        bar = progress_bar(desc="pseudo-label", total=stop, initial=start, unit="img")
    else:
        bar = progress_bar(desc=f"pseudo-label shard {shard}", total=sum(b[1] - b[0] for b in blocks), unit="img")
    began = time.perf_counter()
    scored = kept = 0
    try:
        for first, last in blocks:
            shard_began = time.perf_counter()
            parts, shard_scored = [], 0
            for index in range(first, last):
                candidates = vocabulary(cache.records[index]["captions"]) if vocabulary else None
                regions, n = label_image(teacher, source, cache.image(index), concept_emb, config, candidates)
                regions["image_index"].fill_(index)
                parts.append(regions)
                shard_scored += n
                bar.update(1)
            tensors = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
            shard_kept = int(tensors["image_index"].shape[0])
            seconds = time.perf_counter() - shard_began
            (writer if part is None else part).append(first, last, tensors,
                                                      {"proposals": shard_scored, "seconds": round(seconds, 3)})
            scored += shard_scored
            kept += shard_kept
            elapsed = time.perf_counter() - began
            bar.set_postfix({"regions/s": f"{scored / max(elapsed, 1e-9):.0f}", "kept": f"{kept / max(scored, 1):.0%}"})
    finally:
        bar.close()
    if part is not None:
        return PseudoLabelRun(writer.directory, blocks[0][0], blocks[-1][1], writer.next_image, scored, kept,
                              time.perf_counter() - began, sum(b[1] - b[0] for b in blocks))
    return PseudoLabelRun(writer.directory, start, writer.next_image, writer.next_image, scored, kept,
                          time.perf_counter() - began)
