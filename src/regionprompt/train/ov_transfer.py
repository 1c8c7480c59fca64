"""RegionCLIP's open-vocabulary transfer: fine-tune a CLIP image tower into a detector on base classes.

The detector (RegionCLIP step 6) is the zero-shot one of :mod:`regionprompt.detect.regionclip` with a
trained region encoder and a learned background class:

* class-agnostic proposals from a frozen, already trained RPN
  (:class:`~regionprompt.detect.rpn.ProposalNetwork`);
* the CLIP image tower up to ``res4`` on the whole image, RoIAlign (14 x 14), ``res5`` and the attention
  pool per region -> region embedding ``r`` (L2-normalised): exactly what
  :class:`~regionprompt.detect.regionclip.regions.RegionEncoder` computes at inference;
* logits ``[r . t_c / T for every base class c] + [r . b / T]``: ``t_c`` the frozen text embeddings of the
  class names (template ensemble, computed once), ``b`` one learned background embedding (``(D,)``,
  not normalised, so its length -- the background's cosine threshold -- is learned too).

Each step takes ``batch_size`` scenes of the EmojiWorld ``det-train`` scene cache (only base-concept
boxes are labelled there; novel objects stay unlabelled background, the open-vocabulary protocol, and
any non-base box is dropped again here), optionally flips them, asks the RPN for proposals of each
image, appends the ground-truth boxes (as Faster R-CNN does), labels every candidate with the base class
of the ground-truth box it overlaps with IoU >= ``fg_iou`` (else background), and samples
``rois_per_image`` of them with at most ``fg_fraction`` foreground. Loss: cross-entropy over
(base classes + background), focal-scaled by ``(1 - p_t) ** focal_gamma`` (RegionCLIP's
``focal_scaled_loss``), the background RoIs' terms weighted by ``background_weight`` (paper: 0.2 COCO,
0.8 LVIS), averaged over all sampled RoIs.

Trained: the image tower's stages from ``frozen_stages`` on (default: ``res4``, ``res5``) and the
attention pool, plus the background embedding. BatchNorm is frozen (statistics and affine, RegionCLIP's
FrozenBN: a few images per batch give poor statistics). AdamW, linear warm-up + cosine decay, gradient
clipping, and :func:`~regionprompt.train.loop.run_loop` (progress bar, checkpoints, resume). Batches,
flips and RoI samples are functions of the step number and the RPN sees one image at a time, so a
resumed run equals an uninterrupted one.

The result, ``OUT/model``, is a RegionCLIP detector folder (``clip/``, ``rpn/``,
``background.safetensors``, ``detector.json`` with background ``"learned"``) that
:meth:`regionprompt.api.Detector.load` reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from regionprompt.data.files import atomic_write_text
from regionprompt.detect.rpn import ProposalNetwork
from regionprompt.devices import resolve_device
from regionprompt.errors import RegionPromptError
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.logging_utils import get_logger
from regionprompt.regionclip.region_encoder import ROI_SIZE, region_feature_map
from regionprompt.train.augment import augment_batch
from regionprompt.train.caption_regions import CaptionImages, load_caption_images
from regionprompt.train.finalize import MODEL_DIR, RECIPE_FILE, needs_final_save
from regionprompt.train.loop import LoopResult, run_loop
from regionprompt.train.schedule import warmup_cosine
from regionprompt.train.trex2 import SceneBatches
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

_log = get_logger("train.ov_transfer")

BACKGROUND_INITS = ("text", "zero")


@dataclass(frozen=True)
class RegionClipTransferConfig:
    """Recipe for ``regionprompt train detector --arch regionclip``."""

    image_size: int | None = None  # model input side (square); None: the CLIP card's image_size (inference default)
    scene_size: int = 320  # side of the det-train scenes in the scene cache (the RPN resizes to its own size)
    num_scenes: int = 4000  # det-train scenes (rendered once into the scene cache, cycled as epochs)
    world_seed: int = 0
    steps: int = 2000
    batch_size: int = 4  # scenes per step
    rpn_proposals: int = 300  # RPN proposals per image (best first, after its NMS) that become RoI candidates
    rois_per_image: int = 64  # RoIs sampled per image for the loss (Faster R-CNN: 512; CPU budget here)
    fg_fraction: float = 0.25  # at most this fraction of the sampled RoIs are foreground
    fg_iou: float = 0.5  # a candidate with IoU >= this to a base box takes its class, else it is background
    temperature: float = 0.01  # cosine / T (RegionCLIP: 0.01); the saved detector scores with the same T
    focal_gamma: float = 0.5  # focal scaling (1 - p_t)^gamma of the cross-entropy (RegionCLIP: 0.5); 0 = plain CE
    background_weight: float = 0.8  # loss weight of background RoIs (RegionCLIP: 0.2 COCO, 0.8 LVIS-like vocabularies)
    background_init: str = "text"  # "text": the text embedding of "background" (the zero-shot start); "zero": RegionCLIP's
    templates: str = "emoji"  # template set of the class-name embeddings (and of the saved detector's text prompts)
    lr: float = 1e-4  # image tower
    background_lr: float = 1e-3  # background embedding
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    frozen_stages: int = 3  # image-tower stages not trained: 1 = stem, 2 = + res2, 3 = + res3 (train res4, res5)
    flip: float = 0.5  # probability of a horizontal flip per image
    seed: int = 0  # batch order, flips, RoI sampling
    checkpoint_every: int = 200
    augment: bool = False  # appearance augmentation that keeps the concept (train/augment.py), scenes and caption images
    # The caption term (train/caption_regions.py): iconic pretrain image-caption pairs name the pool phrases
    # their captions mention, so names never boxed (novel) are taught too. 0 = off.
    caption_weight: float = 0.0
    caption_images: int = 20000  # iconic pretrain images (rendered once into their own scene cache)
    caption_size: int = 128  # side of the stored caption images (the model sees them at this size)
    caption_batch: int = 16  # caption images per step
    caption_min_count: int = 5  # a caption phrase joins the pool when at least this many images mention it

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "rpn_proposals", "rois_per_image", "num_scenes", "checkpoint_every",
                     "caption_images", "caption_batch", "caption_min_count"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 32:
            problems.append(f"image_size must be >= 32, got {self.image_size}")
        if self.scene_size < 32:
            problems.append(f"scene_size must be >= 32, got {self.scene_size}")
        if not 0 < self.fg_fraction <= 1 or not 0 < self.fg_iou <= 1 or not 0 <= self.flip <= 1:
            problems.append("fg_fraction and fg_iou must be in (0, 1], flip in [0, 1]")
        if self.temperature <= 0 or self.focal_gamma < 0 or self.background_weight < 0 or self.caption_weight < 0:
            problems.append("temperature must be > 0, focal_gamma, background_weight and caption_weight >= 0")
        if self.caption_size < 32:
            problems.append(f"caption_size must be >= 32, got {self.caption_size}")
        if self.background_init not in BACKGROUND_INITS:
            problems.append(f"background_init must be one of {BACKGROUND_INITS}, got {self.background_init!r}")
        if not 0 <= self.frozen_stages <= 4:
            problems.append(f"frozen_stages must be in 0..4 (res5 and the attention pool always train), "
                            f"got {self.frozen_stages}")
        if problems:
            raise RegionPromptError("invalid RegionCLIP transfer config: " + "; ".join(problems))


# ---- classes and labels ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseClasses:
    """The classifier's classes: every base concept of EmojiWorld, in id order; background is index ``len``.

    Attributes:
        ids: concept ids, one per class.
        names: their names (the text the class embeddings are made from).
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def load(cls) -> BaseClasses:
        base = load_concepts().subset(split="base")
        return cls(tuple(int(c.id) for c in base), tuple(c.name for c in base))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def background(self) -> int:
        """Label of the background class."""
        return len(self.ids)

    def targets(self, boxes: np.ndarray, concepts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth boxes ``(N, 4)`` xyxy and concept ids ``(N,)`` -> the base ones only: boxes
        ``(M, 4)`` float32 and class labels ``(M,)`` int64 in ``[0, len)``. A non-base concept is dropped
        (it must never become a positive, whatever the scene records say)."""
        index = {c: i for i, c in enumerate(self.ids)}
        keep = [i for i, c in enumerate(concepts.tolist()) if int(c) in index]
        labels = torch.tensor([index[int(concepts[i])] for i in keep], dtype=torch.long)
        return torch.from_numpy(np.ascontiguousarray(boxes[keep], dtype=np.float32)).reshape(-1, 4), labels


def label_candidates(candidates: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                     background: int, fg_iou: float) -> torch.Tensor:
    """Class label of each candidate box.

    Args:
        candidates: ``(K, 4)`` xyxy; gt_boxes: ``(N, 4)`` xyxy (same pixels); gt_labels: ``(N,)`` classes.
        background: the background label; fg_iou: IoU from which a candidate takes its best box's class.
    Returns:
        ``(K,)`` int64: the class of the ground-truth box with the highest IoU when that IoU >= ``fg_iou``,
        else ``background``.
    """
    labels = torch.full((len(candidates),), background, dtype=torch.long)
    if len(gt_boxes) and len(candidates):
        best, match = box_iou(candidates, gt_boxes).max(dim=1)
        foreground = best >= fg_iou
        labels[foreground] = gt_labels[match[foreground]]
    return labels


def sample_rois(labels: torch.Tensor, background: int, count: int, fg_fraction: float,
                rng: np.random.Generator) -> torch.Tensor:
    """Indices (sorted) of at most ``count`` candidates: up to ``int(count * fg_fraction)`` foreground
    ones, the rest background (detectron2's ``subsample_labels``), drawn without replacement."""
    fg = torch.nonzero(labels != background).flatten().numpy()
    bg = torch.nonzero(labels == background).flatten().numpy()
    n_fg = min(len(fg), int(count * fg_fraction))
    n_bg = min(len(bg), count - n_fg)
    picked = np.concatenate([rng.choice(fg, size=n_fg, replace=False), rng.choice(bg, size=n_bg, replace=False)])
    return torch.from_numpy(np.sort(picked).astype(np.int64))


def transfer_loss(logits: torch.Tensor, labels: torch.Tensor, background: int, gamma: float,
                  background_weight: float) -> dict[str, torch.Tensor]:
    """RegionCLIP's focal-scaled, background-weighted cross-entropy.

    Args:
        logits: ``(R, C + 1)`` (classes, then background), already divided by the temperature.
        labels: ``(R,)`` in ``[0, C]``; ``background`` = C.
    Returns:
        ``loss`` (mean over the R RoIs of ``w_i * CE_i * (1 - p_t,i) ** gamma``, ``w`` =
        ``background_weight`` for background RoIs, else 1), and its foreground / background parts
        ``loss_fg`` + ``loss_bg`` = ``loss``.
    """
    log_p = logits.log_softmax(dim=1)
    log_pt = log_p.gather(1, labels[:, None]).squeeze(1)
    # 1 - p_t without cancellation. At T = 0.01 a confident RoI reaches p_t == 1.0 in float32, where
    # d/dx x**gamma is infinite for gamma < 1: the clamp keeps the focal factor's derivative finite.
    terms = -log_pt * (-torch.expm1(log_pt)).clamp(min=1e-12) ** gamma
    is_bg = labels == background
    terms = torch.where(is_bg, terms * background_weight, terms)
    count = max(len(labels), 1)
    loss_fg, loss_bg = terms[~is_bg].sum() / count, terms[is_bg].sum() / count
    return {"loss": loss_fg + loss_bg, "loss_fg": loss_fg, "loss_bg": loss_bg}


# ---- the model being trained -------------------------------------------------------------------------


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm layer of ``module`` in eval mode with frozen affine parameters (FrozenBN)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            layer.requires_grad_(False)


class TransferModel(nn.Module):
    """What the transfer trains (and checkpoints): the CLIP image tower and the background embedding.

    The CLIP model's text side and the first ``frozen_stages`` stages of its image tower stay frozen;
    ``visual`` is the CLIP's own image tower (shared, not copied), so training it trains ``clip``.
    """

    def __init__(self, clip: RegionPromptCLIP, frozen_stages: int, background: torch.Tensor) -> None:
        super().__init__()
        if getattr(clip.visual, "region_feature", None) != "res4":
            raise RegionPromptError(f"open-vocabulary transfer needs a ResNet CLIP image tower (RoIAlign on res4), "
                                    f"not {type(clip.visual).__name__}")
        clip.requires_grad_(False)
        self.visual = clip.visual
        self.visual.requires_grad_(True)
        visual = self.visual
        stages: list[list[nn.Module]] = [
            [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3],  # type: ignore[list-item]
            [visual.layer1], [visual.layer2], [visual.layer3],  # type: ignore[list-item]
        ]
        for modules in stages[:frozen_stages]:
            for module in modules:
                module.requires_grad_(False)
        freeze_batchnorm(self.visual)
        self.background = nn.Parameter(background.detach().float().clone())  # (D,)

    def train(self, mode: bool = True) -> TransferModel:
        """Train mode, except BatchNorm: its statistics stay frozen (run_loop calls this every step)."""
        super().train(mode)
        freeze_batchnorm(self.visual)
        return self

    def tower_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.visual.parameters() if p.requires_grad]


# ---- steps ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoiBatch:
    """The sampled RoIs of one step.

    Attributes:
        images: ``(B, 3, S, S)`` float in [0, 1] at the model input size ``S`` (flips applied).
        boxes: B tensors ``(R_i, 4)`` xyxy pixels of ``images``.
        labels: ``(sum R_i,)`` int64 class labels, background = ``len(classes)``.
    """

    images: torch.Tensor
    boxes: tuple[torch.Tensor, ...]
    labels: torch.Tensor


class TransferStep:
    """Samples the RoIs of a step and computes its losses (independent of the loop, for tests).

    Args:
        clip: the CLIP being fine-tuned (its text side gave ``class_embeddings``).
        model: its :class:`TransferModel`.
        rpn: the frozen proposal network.
        batches: det-train batches (:class:`~regionprompt.train.trex2.SceneBatches`).
        classes: the base classes; class_embeddings: ``(C, D)`` their normalised text embeddings.
        device: where the models are; RoI sampling runs on the CPU and its batch is moved there.
        captions: the caption term's images and pool (``config.caption_weight > 0``), else ``None``.
    """

    def __init__(self, clip: RegionPromptCLIP, model: TransferModel, rpn: ProposalNetwork, batches: SceneBatches,
                 classes: BaseClasses, class_embeddings: torch.Tensor, config: RegionClipTransferConfig,
                 device: torch.device = torch.device("cpu"), captions: CaptionImages | None = None) -> None:
        self.clip, self.model, self.rpn, self.batches = clip, model, rpn.eval(), batches
        self.classes, self.class_embeddings, self.config = classes, class_embeddings, config
        self.input_size = int(config.image_size or clip.card.vision.image_size)
        self.device = device
        self.captions = captions

    def rois(self, step: int) -> RoiBatch:
        """The batch of ``step`` with its proposals, labels and sampled RoIs (deterministic in ``step``)."""
        config = self.config
        batch = self.batches(step)
        images = batch.images
        size = images.shape[-1]
        flips = np.random.default_rng([config.seed, 5, step]).random(len(images)) < config.flip
        scale = self.input_size / size
        boxes, labels = [], []
        pixels = []
        for b, (image, gt, ids) in enumerate(zip(images, batch.boxes, batch.concepts)):
            gt_boxes, gt_labels = self.classes.targets(gt, ids)
            if flips[b]:
                image = image.flip(-1)
                gt_boxes = torch.stack([size - gt_boxes[:, 2], gt_boxes[:, 1], size - gt_boxes[:, 0], gt_boxes[:, 3]], 1)
            pixels.append(image)
            # One image per RPN call: its proposals do not depend on which scenes share the batch.
            proposals = self.rpn.propose(image[None].to(self.device), max_proposals=config.rpn_proposals)[0].boxes.cpu()
            candidates = torch.cat([proposals.float(), gt_boxes])
            candidate_labels = label_candidates(candidates, gt_boxes, gt_labels, self.classes.background, config.fg_iou)
            rng = np.random.default_rng([config.seed, 3, step, b])
            pick = sample_rois(candidate_labels, self.classes.background, config.rois_per_image, config.fg_fraction, rng)
            boxes.append(candidates[pick] * scale)
            labels.append(candidate_labels[pick])
        stacked = torch.stack(pixels)
        if config.augment:  # the RPN saw the clean scene: augmentation changes drawings, not where objects are
            stacked = augment_batch(stacked, config.seed, step)
        stacked = stacked.to(self.device)
        if size != self.input_size:
            stacked = F.interpolate(stacked, size=(self.input_size, self.input_size), mode="bilinear",
                                    align_corners=False, antialias=True).clamp_(0, 1)
        return RoiBatch(stacked, tuple(b.to(self.device) for b in boxes), torch.cat(labels).to(self.device))

    def logits(self, rois: RoiBatch) -> torch.Tensor:
        """``(R, C + 1)`` logits of the RoIs: cosines with the class texts and the background, over T."""
        feature_map = region_feature_map(self.clip, rois.images)
        regions = F.normalize(self.clip.visual.pool_regions(feature_map, list(rois.boxes), ROI_SIZE), dim=-1)
        sims = torch.cat([regions @ self.class_embeddings.t(), (regions @ self.model.background)[:, None]], dim=1)
        return sims / self.config.temperature

    def losses(self, step: int) -> dict[str, torch.Tensor]:
        """Loss terms (:func:`transfer_loss`) and accuracies of ``step``."""
        rois = self.rois(step)
        logits = self.logits(rois)
        config = self.config
        terms = transfer_loss(logits, rois.labels, self.classes.background, config.focal_gamma, config.background_weight)
        with torch.no_grad():
            right = logits.argmax(dim=1) == rois.labels
            is_bg = rois.labels == self.classes.background
            # Accuracy of the argmax class; a kind of RoI absent from the step is not reported (no NaN in the log).
            if (~is_bg).any():
                terms["fg_acc"] = right[~is_bg].float().mean()
            if is_bg.any():
                terms["bg_acc"] = right[is_bg].float().mean()
            terms["fg_rois"] = (~is_bg).sum().float() / len(rois.boxes)
        if self.captions is not None and config.caption_weight > 0:
            batch = self.captions.batch(step, config.caption_batch, config.seed, augment=config.augment)
            caption_loss, caption_top1 = self.captions.loss(self.clip, batch, config.temperature)
            terms["loss"] = terms["loss"] + config.caption_weight * caption_loss
            terms["caption_loss"], terms["caption_top1"] = caption_loss, caption_top1
        return terms


# ---- building and running ------------------------------------------------------------------------------


def class_embeddings(clip: RegionPromptCLIP, classes: BaseClasses, templates: str,
                     cache: EmbeddingCache | None) -> torch.Tensor:
    """``(C, D)`` normalised, template-ensembled text embeddings of the class names (frozen text side)."""
    with torch.no_grad():
        return PromptEmbedder(clip.text_encoder(), templates, cache).embed(list(classes.names)).float()


def initial_background(clip: RegionPromptCLIP, config: RegionClipTransferConfig,
                       cache: EmbeddingCache | None) -> torch.Tensor:
    """``(D,)`` starting background embedding (``config.background_init``)."""
    if config.background_init == "zero":
        return torch.zeros(clip.embed_dim)
    # The "text" background of the zero-shot detector: training starts from its behaviour.
    with torch.no_grad():
        return PromptEmbedder(clip.text_encoder(), config.templates, cache).embed(["background"])[0].float()


def prepare(config: RegionClipTransferConfig, *, clip: str | Path | RegionPromptCLIP,
            rpn: str | Path | ProposalNetwork, cache: SceneCache,
            text_cache: EmbeddingCache | None = None, device: str | torch.device = "cpu",
            caption_cache: SceneCache | None = None, pool_path: Path | None = None) -> TransferStep:
    """Load the CLIP and the RPN, embed the base classes, and build the trainable model and the step, with
    the models on ``device``. With ``config.caption_weight > 0``, ``caption_cache`` (a pretrain scene cache)
    feeds the caption term and its phrase pool is saved at (or reused from) ``pool_path``."""
    device = resolve_device(device)
    clip_model = clip if isinstance(clip, RegionPromptCLIP) else load_checkpoint(clip)
    rpn_model = rpn if isinstance(rpn, ProposalNetwork) else ProposalNetwork.load(rpn)
    rpn_model.eval().requires_grad_(False)
    classes = BaseClasses.load()
    embeddings = class_embeddings(clip_model, classes, config.templates, text_cache)
    model = TransferModel(clip_model, config.frozen_stages, initial_background(clip_model, config, text_cache))
    batches = SceneBatches(cache, config.batch_size, config.seed)
    captions = None
    if config.caption_weight > 0:
        if caption_cache is None or pool_path is None:
            raise RegionPromptError("the caption term (caption_weight > 0) needs a pretrain scene cache and a pool path")
        captions = load_caption_images(caption_cache, clip_model, templates=config.templates,
                                       min_count=config.caption_min_count, pool_path=pool_path, text_cache=text_cache,
                                       device=device)
    clip_model.to(device)
    model.to(device)  # the background; the image tower is the CLIP's own, already moved
    rpn_model.to(device)
    return TransferStep(clip_model, model, rpn_model, batches, classes, embeddings.to(device), config, device, captions)


def _summary(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


def train_regionclip_detector(config: RegionClipTransferConfig, out_dir: str | Path, *,
                              clip: str | Path | RegionPromptCLIP, rpn: str | Path | ProposalNetwork,
                              cache_dir: str | Path | None = None, workers: int = 2,
                              text_cache: EmbeddingCache | None = None, log_every: int = 10,
                              max_steps_this_run: int | None = None, device: str | torch.device = "cpu",
                              caption_cache_dir: str | Path | None = None) -> LoopResult:
    """Train (or resume) the RegionCLIP detector; the final detector folder is saved to ``out_dir/model``.

    Args:
        clip: the CLIP model folder to start from (teacher or RegionCLIP student), or the model itself.
        rpn: the trained proposal network folder (frozen), or the network.
        cache_dir: the det-train scene cache (default ``out_dir/scene_cache``); rendered if missing.
        text_cache: where the class-name embeddings persist (``None``: computed, not stored).
        device: where the models train (``"cuda"`` on a GPU); not part of the recipe.
        caption_cache_dir: the iconic pretrain scene cache of the caption term (default
            ``out_dir/caption_cache``); rendered if missing; unused when ``config.caption_weight`` is 0.
    """
    out = Path(out_dir)
    spec = SceneCacheSpec("det-train", config.world_seed, config.num_scenes, config.scene_size)
    cache = build_scene_cache(spec, Path(cache_dir or out / "scene_cache"), workers=workers)
    caption_cache = None
    if config.caption_weight > 0:
        caption_spec = SceneCacheSpec("pretrain", config.world_seed, config.caption_images, config.caption_size,
                                      layout="iconic")
        caption_cache = build_scene_cache(caption_spec, Path(caption_cache_dir or out / "caption_cache"), workers=workers)
        out.mkdir(parents=True, exist_ok=True)
    step_losses = prepare(config, clip=clip, rpn=rpn, cache=cache, text_cache=text_cache, device=device,
                          caption_cache=caption_cache, pool_path=out / "caption_pool.json")
    model, clip_model, rpn_model = step_losses.model, step_losses.clip, step_losses.rpn
    tower = model.tower_parameters()
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in tower if p.ndim >= 2], "lr": config.lr, "weight_decay": config.weight_decay},
         {"params": [p for p in tower if p.ndim < 2], "lr": config.lr, "weight_decay": 0.0},
         {"params": [model.background], "lr": config.background_lr, "weight_decay": 0.0}],
        fused=True,  # one kernel for all parameters: far less optimizer time on CPU (as train/trex2.py)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=config.warmup_steps, total=config.steps, floor=0.02)
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def step_fn(step: int) -> dict[str, float]:
        terms = step_losses.losses(step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        return {**_summary(terms), "grad_norm": float(grad_norm)}

    start = {
        "clip": clip_model.card.name, "clip_hash": clip_model.card.weights_hash or clip_model.weights_hash(),
        "rpn": rpn_model.card.name, "rpn_hash": rpn_model.card.weights_hash,
    }
    began = time.perf_counter()
    result = run_loop(
        out_dir=out, model=model, optimizer=optimizer, scheduler=scheduler, total_steps=config.steps,
        step_fn=step_fn, checkpoint_every=config.checkpoint_every, log_every=log_every,
        desc=f"train regionclip detector ({clip_model.card.name})", samples_per_step=config.batch_size,
        # The starting models' hashes: resuming onto another CLIP or RPN is refused.
        run_info={"config": asdict(config), "cache": asdict(cache.spec), **start},
        max_steps_this_run=max_steps_this_run,
    )
    if needs_final_save(result, out):
        for module in (clip_model, model, rpn_model):
            module.to("cpu")
        folder = save_detector(step_losses, out, {
            "stage": "RegionCLIP open-vocabulary transfer (detector fine-tuning on base classes)",
            "recipe": asdict(config),
            "data": f"EmojiWorld det-train, {config.num_scenes} scenes at {config.scene_size} px, seed "
                    f"{config.world_seed}; boxes of the {len(step_losses.classes)} base concepts only"
                    + (f"; plus {config.caption_images} iconic pretrain image-caption pairs at {config.caption_size} px "
                       f"(captions only, no boxes)" if config.caption_weight > 0 else ""),
            "initial_clip": {"name": clip_model.card.name, "weights_hash": start["clip_hash"],
                             "training": dict(clip_model.card.training)},
            "rpn": {"name": rpn_model.card.name, "weights_hash": rpn_model.card.weights_hash},
            "final_losses": dict(result.metrics),
        }, began=began)
        _log.info("saved the RegionCLIP detector to %s", folder)
    return result


def save_detector(step: TransferStep, out_dir: Path, training: Mapping[str, object], *, began: float) -> Path:
    """Write the trained detector folder ``out_dir/model`` and ``out_dir/recipe.json``; returns the folder.

    The CLIP's card records ``training``; the detector scores like it was trained: background
    ``"learned"``, the training temperature, templates and input size.
    """
    from regionprompt.api import Detector
    from regionprompt.detect.regionclip.zeroshot import (
        LEARNED_BACKGROUND,
        ZeroShotConfig,
    )

    config = step.config
    record = {**training, "seconds_last_invocation": round(time.perf_counter() - began, 1)}
    clip = step.clip
    # The starting model's hash no longer describes these weights; saving records the new one.
    clip.card = clip.card.with_updates(training=record, weights_hash=None)
    detector_config = ZeroShotConfig(temperature=config.temperature, background=LEARNED_BACKGROUND,
                                     templates=config.templates, input_size=config.image_size)
    detector = Detector.from_models(clip, step.rpn, detector_config, cache=None,
                                    background=step.model.background.detach().clone())
    folder = out_dir / MODEL_DIR
    detector.save(folder)
    atomic_write_text(out_dir / RECIPE_FILE, json.dumps(record, indent=2, sort_keys=True, default=str))
    return folder


__all__ = ["BaseClasses", "RegionClipTransferConfig", "RoiBatch", "TransferModel", "TransferStep",
           "label_candidates", "prepare", "sample_rois", "save_detector", "train_regionclip_detector",
           "transfer_loss"]
