"""CLIP pretraining of the teacher on EmojiWorld image-caption pairs (RegionCLIP's step 0).

Symmetric InfoNCE between the image embeddings and the embeddings of one caption per image, with
CLIP's learnable temperature (clamped at 100). AdamW, linear warm-up + cosine decay, gradient
clipping. Scenes come from a pre-rendered :mod:`~regionprompt.train.scene_cache`; the batch and the
caption chosen for each image are functions of the step number, so a resumed run is identical to an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regionprompt.logging_utils import get_logger
from regionprompt.train.loop import LoopResult, run_loop
from regionprompt.train.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache
from regionprompt.train.schedule import warmup_cosine
from regionprompt.vl.cards import TextCard, load_card
from regionprompt.vl.clip_model import RegionPromptCLIP

_log = get_logger("train.clip")


@dataclass(frozen=True)
class ClipPretrainConfig:
    """Recipe for ``regionprompt train clip``."""

    card: str = "RN-tiny"  # model card name or path
    text: str = "clip"  # text side: "clip" (trained transformer) or "minilm" (frozen LM + projection)
    image_size: int | None = None  # training resolution; default: the card's vision.image_size
    num_scenes: int = 20000  # distinct pretrain scenes (rendered once, cycled as epochs)
    world_seed: int = 0  # EmojiWorld seed of the pretrain scenes
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 150
    grad_clip: float = 1.0
    seed: int = 0  # model init and batch order
    checkpoint_every: int = 100


def build_model(config: ClipPretrainConfig) -> RegionPromptCLIP:
    card = load_card(config.card)
    if config.text != card.text.kind:
        card = card.with_updates(text=TextCard(kind=config.text, projection="mlp", hidden_dim=512))
    card = card.with_updates(name=f"{card.name}-{config.text}")
    torch.manual_seed(config.seed)
    return RegionPromptCLIP(card)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching ``(B, D)`` normalised pairs."""
    logits = scale * image_emb @ text_emb.t()
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class _Batches:
    """Deterministic batches: epoch permutations of the scenes and one caption per image, from the step."""

    def __init__(self, cache: SceneCache, batch_size: int, seed: int) -> None:
        self.cache, self.batch_size, self.seed = cache, batch_size, seed
        self.per_epoch = len(cache) // batch_size

    def __call__(self, step: int) -> tuple[torch.Tensor, list[str]]:
        epoch, position = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.cache))
        indices = np.sort(order[position * self.batch_size : (position + 1) * self.batch_size])
        pick = np.random.default_rng([self.seed, 1_000_003, step])
        captions = []
        for i in indices:
            options = self.cache.records[i]["captions"]
            captions.append(options[int(pick.integers(len(options)))])
        images = torch.from_numpy(np.ascontiguousarray(self.cache.images[indices])).permute(0, 3, 1, 2)
        return images.float().div_(255.0), captions


def train_clip(config: ClipPretrainConfig, out_dir: str | Path, *, cache_dir: str | Path | None = None,
               workers: int = 2, max_steps_this_run: int | None = None) -> LoopResult:
    """Pretrain (or resume) a CLIP teacher; the final model is saved to ``out_dir/model``."""
    out = Path(out_dir)
    model = build_model(config)
    size = config.image_size or model.card.vision.image_size
    spec = SceneCacheSpec("pretrain", config.world_seed, config.num_scenes, size)
    cache = build_scene_cache(spec, Path(cache_dir or out / "scene_cache"), workers=workers)
    if len(cache) < config.batch_size:
        raise ValueError(f"num_scenes ({len(cache)}) must be at least the batch size ({config.batch_size})")
    batches = _Batches(cache, config.batch_size, config.seed)

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True,  # 6x faster than the default on CPU: the 12.6 M-entry token embedding dominates the step
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=config.warmup_steps, total=config.steps, floor=0.02)
    )

    def step_fn(step: int) -> dict[str, float]:
        images, captions = batches(step)
        image_emb, text_emb, scale = model(images, captions)
        loss = contrastive_loss(image_emb, text_emb, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        return {"loss": loss.item(), "scale": float(scale), "grad_norm": float(grad_norm)}

    began = time.perf_counter()
    result = run_loop(
        out_dir=out,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=config.steps,
        step_fn=step_fn,
        checkpoint_every=config.checkpoint_every,
        desc=f"train clip ({model.card.name})",
        samples_per_step=config.batch_size,
        run_info=asdict(config),
        max_steps_this_run=max_steps_this_run,
    )
    if result.finished:
        training = {
            "recipe": asdict(config),
            "data": f"EmojiWorld pretrain split, {config.num_scenes} scenes at {size} px, seed {config.world_seed}",
            "final_loss": result.metrics.get("loss"),
            "seconds_last_invocation": round(time.perf_counter() - began, 1),
        }
        model.card = model.card.with_updates(training=training)
        model.save(out / "model")
        (out / "recipe.json").write_text(json.dumps(training, indent=2, sort_keys=True))
        _log.info("saved teacher to %s", out / "model")
    return result
