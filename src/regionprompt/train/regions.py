"""Region-text pretraining of the RegionCLIP student (RegionCLIP step 5).

The student is a copy of the teacher; the teacher and the whole text side stay frozen, only the
student's image tower learns. Each step takes ``batch_size`` images of the pseudo-labelled scene
cache, samples up to ``regions_per_image`` pseudo-labelled regions of each, and runs the student once
per image batch (regions and the whole-image box pooled from the same res4 map). Three losses, each
with its own weight (0 drops it, for ablations), at the fixed temperature T (paper: 0.01):

* ``distill``: KL(p_teacher || p_student) over the whole concept pool
  (:func:`~regionprompt.regionclip.losses.region_distillation_loss`). ``distill_source="teacher"``
  (default) recomputes the teacher's probabilities on the same regions with the frozen teacher, the
  exact full-pool target of the paper; ``"topk"`` uses the stored top-k probabilities instead (no
  teacher forward pass, about a fifth cheaper; the target is truncated to k concepts).
* ``contrastive``: region-concept contrastive loss over the batch's pseudo-label concepts, regions
  sharing a concept all positives (:func:`~regionprompt.regionclip.losses.concept_contrastive_loss`).
* ``image_text``: the whole image as one box vs one of its captions, symmetric InfoNCE over the batch.

BatchNorm layers are frozen (statistics and affine), as detectron2's FrozenBatchNorm in RegionCLIP:
batches of a few images give poor statistics. AdamW, linear warm-up + cosine decay, gradient-norm
clipping. Batches and region samples are functions of the step number, so a resumed run equals an
uninterrupted one. The final student (the teacher's card, with the student's image tower) is saved
to ``OUT/model``, so every evaluation of a CLIP model works on it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.devices import resolve_device
from regionprompt.errors import RegionPromptError
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.logging_utils import get_logger
from regionprompt.regionclip.label_store import PseudoLabels
from regionprompt.regionclip.losses import (
    concept_contrastive_loss,
    image_text_loss,
    region_distillation_loss,
    topk_distillation_loss,
)
from regionprompt.regionclip.region_encoder import (
    ROI_SIZE,
    concept_logits,
    embed_concepts,
    region_feature_map,
)
from regionprompt.train.distributed import current, gather_with_grad, main_first, rank_device, rank_slice, wrap_ddp
from regionprompt.train.finalize import needs_final_save, save_final_model
from regionprompt.train.loop import LoopResult, run_loop
from regionprompt.train.schedule import warmup_cosine
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache
from regionprompt.world.scene_cache import SceneCache

_log = get_logger("train.regions")

DISTILL_SOURCES = ("teacher", "topk")


@dataclass(frozen=True)
class RegionPretrainConfig:
    """Recipe for ``regionprompt train regions``."""

    steps: int = 1000
    batch_size: int = 16  # images per step
    regions_per_image: int = 8  # pseudo-labelled regions sampled per image (all of them if fewer)
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 5.0  # max gradient norm (RegionCLIP: 5)
    temperature: float = 0.01  # of all three losses (RegionCLIP: 0.01)
    distill_weight: float = 1.0  # region distillation KL(p_teacher || p_student); 0 drops it
    contrastive_weight: float = 1.0  # region-concept contrastive; 0 drops it
    image_text_weight: float = 1.0  # whole image vs caption; 0 drops it
    distill_source: str = "teacher"  # "teacher": recompute on the frozen teacher (full pool); "topk": stored top-k
    image_size: int | None = None  # side of the training images; None: the scene cache's
    seed: int = 0  # batch order and region sampling
    checkpoint_every: int = 100
    # Concept-balanced sampling (LVIS's repeat factors): an image is repeated max(1, sqrt(t / f)) times per
    # epoch, f the fraction of labelled images holding its rarest pseudo-label concept; 0 = off.
    repeat_threshold: float = 0.0

    def validate(self) -> None:
        if self.distill_source not in DISTILL_SOURCES:
            raise RegionPromptError(f"distill_source must be one of {DISTILL_SOURCES}, got {self.distill_source!r}")
        weights = (self.distill_weight, self.contrastive_weight, self.image_text_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise RegionPromptError(f"loss weights must be >= 0 and not all 0, got {weights}")
        if self.temperature <= 0:
            raise RegionPromptError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.repeat_threshold <= 1.0:
            raise RegionPromptError(f"repeat_threshold must be in [0, 1], got {self.repeat_threshold}")
        for name in ("steps", "batch_size", "regions_per_image"):
            if getattr(self, name) < 1:
                raise RegionPromptError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RegionBatch:
    """One training batch.

    Attributes:
        images: ``(B, 3, S, S)`` float RGB in [0, 1] (scene-cache pixels).
        boxes: B tensors ``(K_i, 4)`` xyxy pixels of ``images``: the sampled pseudo-labelled regions.
        concept: ``(sum K_i,)`` int64 pseudo labels (pool indices).
        topk_index: ``(sum K_i, k)`` int64; ``topk_prob``: ``(sum K_i, k)`` float32 stored teacher scores.
        captions: B captions, one per image.
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    concept: torch.Tensor
    topk_index: torch.Tensor
    topk_prob: torch.Tensor
    captions: list[str]

    def resized(self, size: int) -> RegionBatch:
        """The batch at ``size x size`` pixels (boxes scaled along)."""
        current = self.images.shape[-1]
        if size == current:
            return self
        images = F.interpolate(self.images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return RegionBatch(images.clamp_(0, 1), [b * (size / current) for b in self.boxes], self.concept,
                           self.topk_index, self.topk_prob, self.captions)

    def to(self, device: torch.device) -> RegionBatch:
        """The batch's tensors on ``device``."""
        return RegionBatch(self.images.to(device), [b.to(device) for b in self.boxes], self.concept.to(device),
                           self.topk_index.to(device), self.topk_prob.to(device), self.captions)


def repeat_factors(labels: PseudoLabels, threshold: float) -> np.ndarray:
    """``(N,)`` float: LVIS's repeat factor of each labelled image, ``max(1, sqrt(threshold / f_c))``
    maximised over the image's pseudo-label concepts ``c``, where ``f_c`` is the fraction of the images
    that hold ``c``. Images without labels get 1; ``threshold == 0`` gives all ones."""
    if threshold <= 0:  # before reading any shard: off is the default and costs nothing
        return np.ones(len(labels))
    per_image = [np.unique(labels.regions(i).concept.numpy()) for i in range(len(labels))]
    counts = np.bincount(np.concatenate(per_image + [np.zeros(0, np.int64)]), minlength=len(labels.pool_names))
    frequency = counts / max(len(per_image), 1)
    factors = np.ones(len(per_image))
    for i, concepts in enumerate(per_image):
        if len(concepts):
            factors[i] = max(1.0, float(np.sqrt(threshold / frequency[concepts]).max()))
    return factors


class RegionBatches:
    """Deterministic batches over the pseudo-labelled images: epoch permutations, region samples and
    caption choices are functions of ``(seed, step)``."""

    def __init__(self, labels: PseudoLabels, cache: SceneCache, batch_size: int, regions_per_image: int, seed: int,
                 repeat_threshold: float = 0.0) -> None:
        if len(labels) < batch_size:
            raise RegionPromptError(f"{labels.directory} covers {len(labels)} images, fewer than the batch size {batch_size}")
        self.labels, self.cache = labels, cache
        self.batch_size, self.regions_per_image, self.seed = batch_size, regions_per_image, seed
        # One fixed stochastic rounding of the repeat factors: every epoch permutes the same multiset of
        # image indices, so an epoch's length, and with it the step -> batch map, is constant.
        factors = repeat_factors(labels, repeat_threshold)
        whole = np.floor(factors)
        extra = np.random.default_rng([seed, 7_000_003]).random(len(factors)) < factors - whole
        self.pool = np.repeat(np.arange(len(labels)), (whole + extra).astype(np.int64))
        self.per_epoch = len(self.pool) // batch_size

    def __call__(self, step: int, part: slice = slice(None)) -> RegionBatch:
        """The batch of ``step``; ``part``: a rank's rows of it (:func:`~regionprompt.train.distributed.rank_slice`)."""
        epoch, position = divmod(step, self.per_epoch)
        order = self.pool[np.random.default_rng([self.seed, epoch]).permutation(len(self.pool))]
        indices = np.sort(order[position * self.batch_size : (position + 1) * self.batch_size])[part]
        boxes, concept, topk_index, topk_prob, captions = [], [], [], [], []
        for i in indices.tolist():
            rng = np.random.default_rng([self.seed, 1_000_003, step, i])
            region = self.labels.regions(i)
            count = len(region.boxes)
            pick = torch.from_numpy(np.sort(rng.choice(count, size=min(count, self.regions_per_image), replace=False)))
            boxes.append(region.boxes[pick])
            concept.append(region.concept[pick])
            topk_index.append(region.topk_index[pick])
            topk_prob.append(region.topk_prob[pick].float())
            options = self.cache.records[i]["captions"]
            captions.append(options[int(rng.integers(len(options)))])
        images = torch.from_numpy(np.array(self.cache.images[indices])).permute(0, 3, 1, 2).float().div_(255.0)
        return RegionBatch(images, boxes, torch.cat(concept), torch.cat(topk_index), torch.cat(topk_prob), captions)


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode with frozen affine parameters."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            layer.requires_grad_(False)


class RegionEmbedder(nn.Module):
    """The student's trainable forward: images ``(B, 3, H, W)`` and per-image xyxy pixel boxes -> the
    boxes' normalised region embeddings ``(sum of boxes, D)`` (one module, so DDP can wrap it)."""

    def __init__(self, student: RegionPromptCLIP) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        feature_map = region_feature_map(self.student, images)
        return F.normalize(self.student.visual.pool_regions(feature_map, boxes, ROI_SIZE), dim=-1)


def region_losses(student: RegionPromptCLIP, teacher: RegionPromptCLIP, batch: RegionBatch, concept_emb: torch.Tensor,
                  config: RegionPretrainConfig, embedder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The losses of one batch: ``{"distill", "contrastive", "image_text"}`` (those with a non-zero
    weight, unweighted) and ``"loss"`` (their weighted sum, differentiable w.r.t. the student).

    ``embedder``: the student's :class:`RegionEmbedder` (or its DDP wrapper). Under torchrun ``batch`` is
    this rank's part: regions, images, labels and teacher targets are gathered across ranks (identity
    in one process), so the losses are the global batch's."""
    t = config.temperature
    height, width = batch.images.shape[-2:]
    with_image = config.image_text_weight > 0
    whole = torch.tensor([[0.0, 0.0, float(width), float(height)]], device=batch.images.device)
    # One RoI pass over each image's regions, followed by its whole-image box when image-text is on.
    boxes = [torch.cat([x, whole]) for x in batch.boxes] if with_image else batch.boxes
    embeddings = (embedder or RegionEmbedder(student))(batch.images, boxes)
    is_whole = torch.zeros(len(embeddings), dtype=torch.bool, device=embeddings.device)
    if with_image:
        is_whole[torch.tensor([len(x) for x in boxes], device=embeddings.device).cumsum(0) - 1] = True
    region_emb, image_emb = gather_with_grad(embeddings[~is_whole]), gather_with_grad(embeddings[is_whole])
    losses: dict[str, torch.Tensor] = {}
    if config.distill_weight > 0:
        student_logits = concept_logits(region_emb, concept_emb, t)
        if config.distill_source == "teacher":
            with torch.no_grad():
                teacher_map = region_feature_map(teacher, batch.images)
                teacher_emb = F.normalize(teacher.visual.pool_regions(teacher_map, batch.boxes, ROI_SIZE), dim=-1)
                teacher_probs = gather_with_grad(concept_logits(teacher_emb, concept_emb, t).softmax(dim=-1))
            losses["distill"] = region_distillation_loss(student_logits, teacher_probs)
        else:
            losses["distill"] = topk_distillation_loss(student_logits, gather_with_grad(batch.topk_index),
                                                       gather_with_grad(batch.topk_prob))
    if config.contrastive_weight > 0:
        losses["contrastive"] = concept_contrastive_loss(region_emb, concept_emb, gather_with_grad(batch.concept), t)
    if with_image:
        with torch.no_grad():
            caption_emb = gather_with_grad(teacher.text_encoder().encode_text(batch.captions))
        losses["image_text"] = image_text_loss(image_emb, caption_emb, t)
    weights = {"distill": config.distill_weight, "contrastive": config.contrastive_weight, "image_text": config.image_text_weight}
    losses["loss"] = sum(weights[name] * value for name, value in losses.items())  # type: ignore[assignment]
    return losses


@dataclass
class RegionTrainer:
    """The frozen teacher, the student and everything a step needs (built by :func:`prepare`)."""

    teacher: RegionPromptCLIP
    student: RegionPromptCLIP
    concept_emb: torch.Tensor  # (C, D) frozen pool embeddings
    batches: RegionBatches
    labels: PseudoLabels
    config: RegionPretrainConfig
    device: torch.device = torch.device("cpu")
    part: slice = field(default_factory=lambda: slice(None))  # this rank's rows of each batch (all of them in one process)
    embedder: nn.Module | None = None  # the student's RegionEmbedder, DDP-wrapped under torchrun

    def batch(self, step: int) -> RegionBatch:
        batch = self.batches(step, self.part).to(self.device)
        return batch.resized(self.config.image_size) if self.config.image_size else batch

    def losses(self, step: int) -> dict[str, torch.Tensor]:
        freeze_batchnorm(self.student.visual)
        return region_losses(self.student, self.teacher, self.batch(step), self.concept_emb, self.config, self.embedder)


def prepare(config: RegionPretrainConfig, *, teacher: str | Path | RegionPromptCLIP, labels_dir: str | Path,
            cache_dir: str | Path, embedding_cache: EmbeddingCache | None = None,
            device: str | torch.device = "cpu") -> RegionTrainer:
    """Load the teacher, the pseudo labels and their scene cache, check they belong together, and
    build the student (a copy of the teacher whose image tower alone is trainable), both on ``device``."""
    config.validate()
    device = resolve_device(device)
    teacher_model = teacher if isinstance(teacher, RegionPromptCLIP) else load_checkpoint(teacher)
    teacher_model.eval().requires_grad_(False)
    labels = PseudoLabels.open(labels_dir)
    identity = labels.meta["identity"]
    if identity.get("teacher_hash") != teacher_model.weights_hash():
        raise RegionPromptError(f"the pseudo labels in {labels_dir} were made by another teacher than {teacher}")
    cache = SceneCache(cache_dir)
    if identity.get("cache") != asdict(cache.spec):
        raise RegionPromptError(f"the pseudo labels in {labels_dir} belong to the scene cache {identity.get('cache')}, "
                                f"not {cache_dir} ({asdict(cache.spec)})")
    concept_emb = embed_concepts(teacher_model, labels.pool_names, identity["templates"], embedding_cache)
    student = copy.deepcopy(teacher_model)
    student.requires_grad_(False)
    student.visual.requires_grad_(True)
    freeze_batchnorm(student.visual)
    batches = RegionBatches(labels, cache, config.batch_size, config.regions_per_image, config.seed,
                            config.repeat_threshold)
    return RegionTrainer(teacher_model.to(device), student.to(device), concept_emb.to(device), batches, labels, config,
                         device)


def train_regions(config: RegionPretrainConfig, out_dir: str | Path, *, teacher: str | Path, labels_dir: str | Path,
                  cache_dir: str | Path, max_steps_this_run: int | None = None,
                  embedding_cache: EmbeddingCache | None = None, device: str | torch.device = "cpu") -> LoopResult:
    """Train (or resume) the student on ``device``; the final model is saved to ``out_dir/model``.

    Under torchrun (:mod:`regionprompt.train.distributed`) ``config.batch_size`` is the global batch of
    images, split over the ranks; the losses see every rank's regions (gathered), so N ranks take the
    steps one process would."""
    out = Path(out_dir)
    dist_ctx = current()
    with main_first():  # rank 0 fills the concept-embedding cache, the others read it
        trainer = prepare(config, teacher=teacher, labels_dir=labels_dir, cache_dir=cache_dir,
                          embedding_cache=embedding_cache, device=rank_device(device))
    trainer.part = rank_slice(config.batch_size, dist_ctx)
    trainer.embedder = wrap_ddp(RegionEmbedder(trainer.student), trainer.device)
    visual = trainer.student.visual
    decay, no_decay = [], []
    for param in visual.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=config.warmup_steps, total=config.steps, floor=0.02)
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def step_fn(step: int) -> Mapping[str, float]:
        losses = trainer.losses(step)
        optimizer.zero_grad(set_to_none=True)
        if not losses["loss"].requires_grad:  # no region in the batch and image-text dropped: nothing to learn
            return {k: float(v) for k, v in losses.items()}
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(grad_norm)}

    labels_identity = {"teacher_hash": trainer.labels.meta["identity"]["teacher_hash"],
                       "pool_hash": trainer.labels.meta["identity"]["pool_hash"], "images": len(trainer.labels),
                       "regions": trainer.labels.num_regions}
    began = time.perf_counter()
    result = run_loop(
        out_dir=out,
        model=visual,  # only the image tower changes: checkpoints hold just it
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=config.steps,
        step_fn=step_fn,
        checkpoint_every=config.checkpoint_every,
        desc="train regions",
        samples_per_step=config.batch_size,
        run_info={"config": asdict(config), "labels": labels_identity},
        max_steps_this_run=max_steps_this_run,
    )
    if dist_ctx.is_main and needs_final_save(result, out):
        student = trainer.student.to("cpu")
        teacher_card = trainer.teacher.card
        training = {
            "stage": "RegionCLIP region-text pretraining (student)",
            "recipe": asdict(config),
            "teacher": {"name": teacher_card.name, "weights_hash": teacher_card.weights_hash, "training": teacher_card.training},
            "pseudo_labels": {**labels_identity, "threshold": trainer.labels.meta["identity"].get("threshold"),
                              "proposals": trainer.labels.meta["identity"].get("proposals")},
            "final_losses": dict(result.metrics),
        }
        if dist_ctx.enabled:
            training["distributed"] = dist_ctx.record(config.batch_size)
        student.card = teacher_card  # the student is saved as the teacher's architecture with its own weights
        _log.info("saved the student to %s", save_final_model(student, out, training, began=began))
    return result
