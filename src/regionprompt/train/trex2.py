"""Training of the T-Rex2 detector on EmojiWorld ``det-train`` (boxes of base concepts only).

Each step draws a batch of pre-rendered scenes (:mod:`~regionprompt.world.scene_cache`) and is one of
three iteration kinds, by a schedule fixed by the step number:

* ``t`` text -- the prompt columns are the text embeddings (frozen text side, projected) of every
  concept present in the batch, plus ``extra_negatives`` random other base concepts;
* ``b`` box / ``p`` point -- for every (image, concept) present, 1..``max_prompts`` random ground-truth
  boxes of that concept on that image become its prompts (points: the box centre with probability
  ``centre_point_prob``, else a uniform point inside the box); the visual prompt encoder turns each
  group into one column. Every image is scored against every column, so other images' categories
  are negatives, and columns of the same concept from other images are positives (cross-image,
  "generic" prompting). The text-visual alignment loss ties each visual column to its concept's text.

The schedule: ``text_warmup_steps`` text iterations first, then ``cycle`` (e.g. ``"tbbpp"``) repeated.
Losses: Hungarian-matched focal + L1 + GIoU on every decoder layer and the query selection,
denoising, and alignment (visual iterations). AdamW with a smaller backbone learning rate, linear
warm-up + cosine decay, gradient clipping. Batches, prompt choices and noise are functions of the
step number, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

from regionprompt.devices import resolve_device
from regionprompt.errors import DatasetError, RegionPromptError
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.logging_utils import get_logger
from regionprompt.train.augment import augment_batch
from regionprompt.train.finalize import needs_final_save, save_final_model
from regionprompt.train.loop import LoopResult, run_loop
from regionprompt.train.schedule import warmup_cosine
from regionprompt.trex2.card import TRex2Card
from regionprompt.trex2.denoising import build_denoising_queries
from regionprompt.trex2.losses import LossWeights, TRex2Criterion, alignment_loss
from regionprompt.trex2.model import TRex2
from regionprompt.trex2.prompt_encoder import mean_embedding
from regionprompt.trex2.structures import DetectionTarget
from regionprompt.trex2.visual_prompts import make_prompt_batch
from regionprompt.vl.cards import load_card
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache
from regionprompt.world.concepts import load_concepts
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

_log = get_logger("train.trex2")

KINDS = {"t": "text", "b": "box", "p": "point"}


@dataclass(frozen=True)
class TRex2TrainConfig:
    """Recipe for ``regionprompt train detector --arch trex2``."""

    clip: str = "RN-tiny"  # CLIP model folder (pretrained backbone + text side) or a card name (random init)
    image_size: int = 320  # training and inference resolution (square)
    dim: int = 128  # detector width = prompt-embedding dimension
    heads: int = 4
    points: int = 4  # deformable sampling points per head and level
    encoder_layers: int = 2
    decoder_layers: int = 3
    prompt_layers: int = 3
    ffn_dim: int = 256
    num_queries: int = 60  # EmojiWorld scenes hold at most 12 objects
    templates: str = "emoji"  # template set of the text prompts
    num_scenes: int = 4000  # det-train scenes (rendered once into the scene cache, cycled as epochs)
    world_seed: int = 0
    steps: int = 4000  # ~75-115 min at 1.1-1.7 s/step with --threads 1 on the shared 2-core machine
    batch_size: int = 4
    lr: float = 2e-4  # detector heads
    backbone_lr: float = 2e-5  # CLIP image tower
    frozen_stages: int = 2  # image-tower stages not trained: 1 = stem, 2 = stem + res2 (DETR), 0 = none
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    grad_clip: float = 0.1
    text_warmup_steps: int = 400  # text-only iterations before the cycle starts
    cycle: str = "tbbpp"  # iteration kinds repeated after the warm-up: t text, b box, p point
    max_prompts: int = 3  # visual prompts per category: 1..max_prompts random ground-truth boxes
    centre_point_prob: float = 0.5  # point prompts: box centre with this probability, else a random interior point
    extra_negatives: int = 8  # text iterations: random other base concepts added as negative columns
    dn_queries: int = 60  # denoising queries per image (positives + negatives, all groups); 0 disables
    dn_label_noise: float = 0.5
    dn_box_noise: float = 1.0
    align_weight: float = 1.0  # text-visual alignment InfoNCE
    align_temperature: float = 0.1
    # T-Rex2 v2 levers (all off by default: the v1 recipe). See the module docstring.
    paired_batches: bool = False  # half of each batch: partner scenes sharing a concept with the other half
    cross_image_prob: float = 0.0  # visual iterations: a concept in several images is prompted from one of them only
    exemplar_mean_prob: float = 0.0  # ... or by the mean of its per-image embeddings (generic, K > 1)
    visual_text_negatives: int = 0  # visual iterations: text columns of this many absent base concepts (negatives)
    augment: bool = False  # appearance augmentation that keeps the concept (blur, noise, contrast, outline-only)
    amp: bool = False  # bfloat16 autocast of the forward pass (CPUs with AVX512-BF16 / AMX)
    seed: int = 0  # model init, batch order, prompt sampling
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if not self.cycle or set(self.cycle) - set(KINDS):
            raise RegionPromptError(f"cycle must be a non-empty string of t (text), b (box), p (point), got {self.cycle!r}")
        if self.max_prompts < 1 or self.batch_size < 1 or self.steps < 1:
            raise RegionPromptError("max_prompts, batch_size and steps must be at least 1")
        if self.paired_batches and self.batch_size < 2:
            raise RegionPromptError("paired batches need a batch size of at least 2")
        for name in ("cross_image_prob", "exemplar_mean_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RegionPromptError(f"{name.replace('_', '-')} must lie in [0, 1], got {getattr(self, name)}")
        if self.cross_image_prob + self.exemplar_mean_prob > 1.0:
            raise RegionPromptError("cross-image-prob + exemplar-mean-prob must not exceed 1")
        if self.visual_text_negatives < 0 or self.extra_negatives < 0:
            raise RegionPromptError("extra-negatives and visual-text-negatives must be >= 0")

    def iteration_kind(self, step: int) -> str:
        """``"text"``, ``"box"`` or ``"point"`` for ``step`` (0-based)."""
        if step < self.text_warmup_steps:
            return "text"
        return KINDS[self.cycle[(step - self.text_warmup_steps) % len(self.cycle)]]

    def card(self, clip: RegionPromptCLIP) -> TRex2Card:
        return TRex2Card(
            clip=clip.card, image_size=self.image_size, dim=self.dim, heads=self.heads, points=self.points,
            encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
            prompt_layers=self.prompt_layers, ffn_dim=self.ffn_dim, num_queries=self.num_queries,
            templates=self.templates,
        )


def load_backbone(spec: str, seed: int) -> RegionPromptCLIP:
    """A CLIP model from a saved folder (pretrained), or randomly initialised from a card name."""
    path = Path(spec)
    if path.is_dir():
        return load_checkpoint(path)
    torch.manual_seed(seed)
    return RegionPromptCLIP(load_card(spec))


def build_model(config: TRex2TrainConfig, init: str | Path | None = None) -> TRex2:
    """A T-Rex2 of ``config``: heads from ``seed``, or the weights of the trained model folder ``init``
    (fine-tuning, or continuing a finished run with a new schedule; same architecture)."""
    clip = load_backbone(config.clip, config.seed)
    torch.manual_seed(config.seed)
    model = TRex2(config.card(clip), clip)
    if init:
        _load_init(model, Path(init))
    model.freeze_backbone_stages(config.frozen_stages)
    return model


_ARCHITECTURE = ("image_size", "dim", "heads", "points", "encoder_layers", "decoder_layers", "prompt_layers",
                 "ffn_dim", "num_queries", "templates")


def _load_init(model: TRex2, folder: Path) -> None:
    """Copy a saved detector's weights into ``model``: the same architecture, any training history."""
    start = TRex2.load(folder)
    differ = [f"{k} {getattr(start.card, k)} (recipe {getattr(model.card, k)})" for k in _ARCHITECTURE
              if getattr(start.card, k) != getattr(model.card, k)]
    try:
        if not differ:
            model.load_state_dict(start.state_dict())
    except RuntimeError as error:  # same sizes, another backbone or text side
        differ.append(str(error).splitlines()[0])
    if differ:
        raise RegionPromptError(f"--init {folder}: not this recipe's architecture: {'; '.join(differ)}")


@dataclass(frozen=True)
class SceneBatch:
    """Images ``(B, 3, S, S)`` in [0, 1] and, per image, labelled boxes ``(N, 4)`` xyxy pixels and concept ids ``(N,)``."""

    images: torch.Tensor
    boxes: tuple[np.ndarray, ...]
    concepts: tuple[np.ndarray, ...]


class SceneBatches:
    """Deterministic batches from the step number: epoch permutations of the scenes that have labels.

    With ``paired``, the first ``ceil(B / 2)`` scenes of a batch come from the epoch permutation
    (anchors) and each of the others is a *partner*: a random other scene holding one of its anchor's
    concepts (drawn in either artwork style), so a prompt drawn on one scene has a target in another --
    the generic, cross-image workflow. ``augment`` applies :func:`~regionprompt.train.augment.augment_batch`.
    """

    def __init__(self, cache: SceneCache, batch_size: int, seed: int, *, paired: bool = False,
                 augment: bool = False) -> None:
        self.cache, self.batch_size, self.seed = cache, batch_size, seed
        self.paired, self.augment = paired, augment
        self.targets = [cache.labelled_targets(i) for i in range(len(cache))]
        self.eligible = np.asarray([i for i, (_, ids) in enumerate(self.targets) if len(ids)], dtype=np.int64)
        if len(self.eligible) < batch_size:
            raise DatasetError(f"{cache.directory}: only {len(self.eligible)} scenes with labelled objects, "
                               f"fewer than the batch size {batch_size}")
        self.anchors = (batch_size + 1) // 2 if paired else batch_size
        self.per_epoch = len(self.eligible) // self.anchors
        scenes: dict[int, list[int]] = {}
        for i in self.eligible:
            for c in sorted({int(c) for c in self.targets[i][1]}):
                scenes.setdefault(c, []).append(int(i))
        self.scenes_of = {c: np.asarray(v, dtype=np.int64) for c, v in scenes.items()}

    def concept_ids(self) -> list[int]:
        """Every concept that has a labelled box somewhere in the cache, sorted."""
        return sorted(self.scenes_of)

    def _partner(self, anchor: int, rng: np.random.Generator) -> int:
        """Another scene sharing a random concept of ``anchor`` (any scene when none does)."""
        concepts = sorted({int(c) for c in self.targets[anchor][1]})
        for c in rng.permutation(concepts):
            others = self.scenes_of[int(c)]
            others = others[others != anchor]
            if len(others):
                return int(rng.choice(others))
        return int(rng.choice(self.eligible[self.eligible != anchor]))

    def indices(self, step: int) -> np.ndarray:
        """Scene indices of the batch of ``step``: anchors first, then their partners (``paired``)."""
        epoch, position = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.eligible)
        anchors = order[position * self.anchors : (position + 1) * self.anchors]
        if not self.paired:
            return np.sort(anchors)
        rng = np.random.default_rng([self.seed, 3, step])
        partners = [self._partner(int(a), rng) for a in anchors[: self.batch_size - self.anchors]]
        return np.concatenate([anchors, np.asarray(partners, dtype=np.int64)])

    def __call__(self, step: int) -> SceneBatch:
        indices = self.indices(step)
        images = torch.from_numpy(np.ascontiguousarray(self.cache.images[indices])).permute(0, 3, 1, 2)
        images = images.float().div_(255.0)
        if self.augment:
            images = augment_batch(images, self.seed, step)
        return SceneBatch(
            images,
            tuple(self.targets[i][0] for i in indices),
            tuple(self.targets[i][1] for i in indices),
        )


@dataclass(frozen=True)
class StepPrompts:
    """The prompt columns of one step.

    Attributes:
        prompts: ``(K, D)`` prompt embeddings.
        column_concepts: ``(K,)`` concept id of each column.
        targets: per image, boxes cxcywh normalised and the column of each object.
        align: alignment loss (visual iterations; zero otherwise).
    """

    prompts: torch.Tensor
    column_concepts: torch.Tensor
    targets: tuple[DetectionTarget, ...]
    align: torch.Tensor


class TRex2Step:
    """Builds the prompts and targets of a step and computes its losses (independent of the loop, for tests)."""

    def __init__(self, model: TRex2, config: TRex2TrainConfig, text_table: torch.Tensor, table_ids: list[int],
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.config, self.device = model, config, device
        self.text_table = text_table.to(device)  # (C, E) frozen text features of table_ids
        self.row = {c: i for i, c in enumerate(table_ids)}
        self.criterion = TRex2Criterion(weights=LossWeights(align=config.align_weight))

    def _normalised_targets(self, batch: SceneBatch) -> list[torch.Tensor]:
        size = batch.images.shape[-1]
        return [box_convert(torch.from_numpy(b).float() / size, "xyxy", "cxcywh").to(self.device) for b in batch.boxes]

    def _rows(self, concepts: list[int]) -> torch.Tensor:
        """``(len(concepts), E)`` text features of ``concepts`` (rows of the frozen table)."""
        return self.text_table[torch.tensor([self.row[c] for c in concepts], device=self.device)]

    def _text_prompts(self, batch: SceneBatch, rng: np.random.Generator) -> StepPrompts:
        present = sorted({int(c) for ids in batch.concepts for c in ids})
        others = [c for c in self.row if c not in set(present)]
        extra = min(self.config.extra_negatives, len(others))
        columns = present + [int(c) for c in rng.choice(others, size=extra, replace=False)] if extra else present
        prompts = self.model.text_prompt_embeddings(self._rows(columns))
        position = {c: i for i, c in enumerate(columns)}
        targets = tuple(
            DetectionTarget(boxes, torch.tensor([position[int(c)] for c in ids], dtype=torch.long, device=self.device))
            for boxes, ids in zip(self._normalised_targets(batch), batch.concepts)
        )
        return StepPrompts(prompts, torch.tensor(columns, device=self.device), targets,
                           torch.zeros((), device=self.device))

    def _draw(self, boxes: np.ndarray, kind: str, rng: np.random.Generator) -> torch.Tensor:
        """1..``max_prompts`` random boxes of ``boxes`` ``(M, 4)`` -> ``(n, 4)`` box or ``(n, 2)`` point prompts."""
        count = int(rng.integers(1, min(self.config.max_prompts, len(boxes)) + 1))
        chosen = boxes[rng.choice(len(boxes), size=count, replace=False)]
        if kind == "point":
            centre = (chosen[:, :2] + chosen[:, 2:]) / 2
            inside = chosen[:, :2] + rng.random((count, 2)) * (chosen[:, 2:] - chosen[:, :2])
            use_centre = rng.random(count) < self.config.centre_point_prob
            chosen = np.where(use_centre[:, None], centre, inside)
        return torch.from_numpy(np.ascontiguousarray(chosen, dtype=np.float32))

    def _visual_prompts(self, batch: SceneBatch, encoded, kind: str, rng: np.random.Generator) -> StepPrompts:
        """Prompt columns of a box / point iteration.

        Per concept present in the batch: by default one column per image holding it (prompts drawn on
        that image); when it is in several images, with ``cross_image_prob`` one column drawn on one of
        them (the others find it from that exemplar), with ``exemplar_mean_prob`` one column that is the
        mean of the per-image embeddings (generic prompting with K > 1). Each object's target column is
        a column of its concept (its own image's when there is one). ``visual_text_negatives`` absent base
        concepts join as text columns with no target.
        """
        config = self.config
        groups: list[tuple[int, torch.Tensor]] = []
        column_groups: list[list[int]] = []  # per column: the groups it averages
        columns: list[int] = []
        position: dict[tuple[int, int], int] = {}
        images_of: dict[int, list[int]] = {}
        for b, ids in enumerate(batch.concepts):
            for c in sorted({int(c) for c in ids}):
                images_of.setdefault(c, []).append(b)
        for c, holders in sorted(images_of.items()):
            draw = float(rng.random()) if len(holders) > 1 else 1.0
            if draw < config.cross_image_prob:
                sources, mode = [int(rng.choice(holders))], "one"
            elif draw < config.cross_image_prob + config.exemplar_mean_prob:
                sources, mode = holders, "mean"
            else:
                sources, mode = holders, "each"
            first = len(groups)
            for b in sources:
                boxes = batch.boxes[b][batch.concepts[b] == c]
                groups.append((b, self._draw(boxes, kind, rng)))
            made = list(range(first, len(groups)))
            if mode == "each":
                for b, g in zip(sources, made):
                    position[(b, c)] = len(columns)
                    column_groups.append([g])
                    columns.append(c)
            else:
                for b in holders:
                    position[(b, c)] = len(columns)
                column_groups.append(made)
                columns.append(c)
        size = batch.images.shape[-1]
        prompt_batch = make_prompt_batch(groups, [(size, size)] * len(batch.boxes)).to(self.device)
        per_group = self.model.visual_prompt_embeddings(encoded, prompt_batch)
        prompts = torch.stack([mean_embedding(per_group[g]) for g in column_groups])
        column_concepts = torch.tensor(columns, device=self.device)
        unique = sorted(set(columns))
        text = self.model.text_prompt_embeddings(self._rows(unique))
        align = alignment_loss(prompts.float(), column_concepts, text.float(), torch.tensor(unique, device=self.device),
                               config.align_temperature)
        if config.visual_text_negatives:
            others = [c for c in self.row if c not in images_of]
            extra = [int(c) for c in rng.choice(others, size=min(config.visual_text_negatives, len(others)), replace=False)]
            negatives = self.model.text_prompt_embeddings(self._rows(extra))
            prompts = torch.cat([prompts, negatives])
            column_concepts = torch.cat([column_concepts, torch.tensor(extra, dtype=column_concepts.dtype,
                                                                       device=self.device)])
        targets = tuple(
            DetectionTarget(boxes, torch.tensor([position[(b, int(c))] for c in ids], dtype=torch.long,
                                                device=self.device))
            for b, (boxes, ids) in enumerate(zip(self._normalised_targets(batch), batch.concepts))
        )
        return StepPrompts(prompts, column_concepts, targets, align)

    def losses(self, batch: SceneBatch, step: int) -> dict[str, torch.Tensor]:
        """All loss terms of ``step`` on ``batch``; ``"loss"`` is the weighted total (alignment included)."""
        config = self.config
        kind = config.iteration_kind(step)
        rng = np.random.default_rng([config.seed, 2, step])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp):
            encoded = self.model.encode_images(batch.images.to(self.device, non_blocking=True))
            if kind == "text":
                step_prompts = self._text_prompts(batch, rng)
            else:
                step_prompts = self._visual_prompts(batch, encoded, kind, rng)
        denoising = None
        if config.dn_queries > 0:
            # A CPU generator on every device: the noise (hence the run) does not depend on where it trains.
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            denoising = build_denoising_queries(
                step_prompts.targets, config.num_queries, len(step_prompts.column_concepts),
                max_queries=config.dn_queries, label_noise=config.dn_label_noise, box_noise=config.dn_box_noise,
                generator=generator,
            )
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp):
            output = self.model(encoded, step_prompts.prompts, denoising)
        if config.amp:  # the losses (focal, GIoU, matching costs) need float32's range and precision
            output = output.float()
        terms = self.criterion(output, step_prompts.targets, step_prompts.column_concepts,
                               denoising_valid=denoising.valid if denoising is not None else None)
        terms["align"] = step_prompts.align
        terms["loss"] = terms["loss"] + config.align_weight * step_prompts.align
        return terms


def summarize(terms: Mapping[str, torch.Tensor], kind: str) -> dict[str, float]:
    """The logged metrics: total, final-layer terms, summed denoising terms, alignment, and the loss per kind."""
    dn = sum(float(v.detach()) for k, v in terms.items() if "_dn" in k)
    out = {k: float(terms[k].detach()) for k in ("loss", "cls", "l1", "giou", "align")}
    out["dn"] = dn
    out[f"loss_{kind}"] = out["loss"]
    return out


def text_table(model: TRex2, concept_ids: list[int], cache: EmbeddingCache | None) -> torch.Tensor:
    """``(C, E)`` frozen text features of the concepts' names."""
    concepts = load_concepts()
    names = [concepts.by_id(c).name for c in concept_ids]
    return model.text_features(names, cache=cache)


def train_trex2(config: TRex2TrainConfig, out_dir: str | Path, *, cache_dir: str | Path | None = None,
                workers: int = 2, text_cache: EmbeddingCache | None = None, log_every: int = 10,
                max_steps_this_run: int | None = None, init: str | Path | None = None,
                device: str | torch.device = "cpu") -> LoopResult:
    """Train (or resume) a T-Rex2 detector; the final model is saved to ``out_dir/model``.

    ``init``: a trained T-Rex2 model folder to start from (see :func:`build_model`); recorded with the
    recipe, so a run is never resumed from another start. ``device``: where the model trains (``"cuda"``
    on a GPU); not part of the recipe, so a run checkpointed on one device resumes on another, and the
    saved model is a CPU folder either way.
    """
    out = Path(out_dir)
    device = resolve_device(device)
    model = build_model(config, init)
    # Only set when used: runs without it keep the run info (and settings keys) they always had.
    recipe = {**asdict(config), **({"init": str(init)} if init else {})}
    spec = SceneCacheSpec("det-train", config.world_seed, config.num_scenes, config.image_size)
    cache = build_scene_cache(spec, Path(cache_dir or out / "scene_cache"), workers=workers)
    batches = SceneBatches(cache, config.batch_size, config.seed, paired=config.paired_batches,
                           augment=config.augment)
    ids = batches.concept_ids()
    table = text_table(model, ids, text_cache)
    model.to(device)
    step_losses = TRex2Step(model, config, table, ids, device)

    optimizer = torch.optim.AdamW(
        [{"params": model.head_parameters(), "lr": config.lr},
         {"params": model.backbone_parameters(), "lr": config.backbone_lr}],
        weight_decay=config.weight_decay,
        fused=True,  # one kernel for all parameters: 40x less optimizer time than the default on CPU
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=config.warmup_steps, total=config.steps, floor=0.05)
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def step_fn(step: int) -> dict[str, float]:
        terms = step_losses.losses(batches(step), step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        return {**summarize(terms, config.iteration_kind(step)), "grad_norm": float(grad_norm)}

    began = time.perf_counter()
    result = run_loop(
        out_dir=out, model=model, optimizer=optimizer, scheduler=scheduler, total_steps=config.steps,
        step_fn=step_fn, checkpoint_every=config.checkpoint_every, log_every=log_every,
        desc=f"train trex2 ({model.card.clip.name})", samples_per_step=config.batch_size,
        run_info=recipe, max_steps_this_run=max_steps_this_run,
    )
    if needs_final_save(result, out):
        training = {
            "recipe": recipe,
            "data": f"EmojiWorld det-train, {config.num_scenes} scenes at {config.image_size} px, seed {config.world_seed}",
            "backbone": config.clip,
            "final_loss": result.metrics.get("loss"),
        }
        model.to("cpu")
        model.card = model.card.with_updates(name=f"trex2-{model.card.clip.name}")
        _log.info("saved T-Rex2 detector to %s", save_final_model(model, out, training, began=began))
    return result
