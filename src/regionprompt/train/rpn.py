"""Training the class-agnostic proposal network on EmojiWorld ``det-train`` boxes.

Only *labelled* boxes are targets, and in ``det-train`` those are the base concepts: novel objects
are in the images but unlabelled, so they count as background, exactly as RegionCLIP's LVIS-base RPN
was trained. Recall on novel objects at test time then measures how far objectness generalises.

Scenes come from a pre-rendered :mod:`~regionprompt.world.scene_cache` at the network's input size;
the batch and each image's horizontal flip are functions of the step number, so a resumed run is
identical to an uninterrupted one. AdamW, linear warm-up + cosine decay, gradient clipping.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from regionprompt.detect.rpn import ProposalNetwork, RpnCard
from regionprompt.logging_utils import get_logger
from regionprompt.train.finalize import needs_final_save, save_final_model
from regionprompt.train.loop import LoopResult, run_loop
from regionprompt.train.schedule import warmup_cosine
from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

_log = get_logger("train.rpn")

#: The canvas the default card's anchors were chosen for; other image sizes scale them.
_ANCHOR_CANVAS = 320


@dataclass(frozen=True)
class RpnTrainConfig:
    """Recipe for ``regionprompt train rpn``."""

    image_size: int = 320  # network input side (multiple of 32); scenes are cached at this size
    width: int = 16  # channels of the first ResNet stage; stages have width x (1, 2, 4, 8)
    blocks: int = 1  # BasicBlocks per ResNet stage
    fpn_channels: int = 32  # channels of the FPN levels and the RPN head
    num_scenes: int = 4000  # distinct det-train scenes (rendered once, cycled as epochs)
    world_seed: int = 0  # EmojiWorld seed of the det-train scenes
    steps: int = 1000  # 1000 x 8 images: 6.6 min with --threads 1 on our (busy) 2-core CPU
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 10.0
    flip: float = 0.5  # probability of a horizontal flip per image
    seed: int = 0  # model init, batch order and flips
    checkpoint_every: int = 50

    def card(self) -> RpnCard:
        """The architecture this recipe trains; anchors scale with the input size (objects do too)."""
        base = RpnCard()
        ratio = self.image_size / _ANCHOR_CANVAS
        return base.with_updates(
            name=f"rpn-w{self.width}-b{self.blocks}-f{self.fpn_channels}-{self.image_size}",
            image_size=self.image_size,
            widths=tuple(self.width * m for m in (1, 2, 4, 8)),
            blocks=(self.blocks,) * 4,
            fpn_channels=self.fpn_channels,
            anchor_sizes=tuple(tuple(round(s * ratio, 1) for s in level) for level in base.anchor_sizes),
        )


class _Batches:
    """Deterministic batches: epoch permutations of the scenes and per-image flips, from the step."""

    def __init__(self, cache: SceneCache, batch_size: int, flip: float, seed: int) -> None:
        self.cache, self.batch_size, self.flip, self.seed = cache, batch_size, flip, seed
        self.per_epoch = len(cache) // batch_size

    def __call__(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, 3, S, S)`` float images in [0, 1] and one ``(N_i, 4)`` xyxy pixel tensor of labelled boxes each."""
        epoch, position = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.cache))
        indices = np.sort(order[position * self.batch_size : (position + 1) * self.batch_size])
        flips = np.random.default_rng([self.seed, 7_919, step]).random(len(indices)) < self.flip
        pixels = np.ascontiguousarray(self.cache.images[indices])
        size = pixels.shape[2]
        boxes = []
        for row, (index, flip) in enumerate(zip(indices, flips)):
            image_boxes, _ = self.cache.labelled_targets(int(index))
            if flip:
                pixels[row] = pixels[row, :, ::-1].copy()
                image_boxes = np.stack([size - image_boxes[:, 2], image_boxes[:, 1],
                                        size - image_boxes[:, 0], image_boxes[:, 3]], axis=1)
            boxes.append(torch.from_numpy(np.ascontiguousarray(image_boxes, dtype=np.float32)).reshape(-1, 4))
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
        return images, boxes


def train_rpn(config: RpnTrainConfig, out_dir: str | Path, *, cache_dir: str | Path | None = None,
              workers: int = 2, max_steps_this_run: int | None = None) -> LoopResult:
    """Train (or resume) a proposal network; the final model is saved to ``out_dir/model``.

    ``cache_dir`` holds the rendered ``det-train`` scenes (default ``out_dir/scene_cache``); it is
    reused by any run with the same scenes and size.
    """
    out = Path(out_dir)
    card = config.card()
    torch.manual_seed(config.seed)
    model = ProposalNetwork(card)
    spec = SceneCacheSpec("det-train", config.world_seed, config.num_scenes, config.image_size)
    cache = build_scene_cache(spec, Path(cache_dir or out / "scene_cache"), workers=workers)
    if len(cache) < config.batch_size:
        raise ValueError(f"num_scenes ({len(cache)}) must be at least the batch size ({config.batch_size})")
    batches = _Batches(cache, config.batch_size, config.flip, config.seed)

    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=config.warmup_steps, total=config.steps, floor=0.02)
    )

    def step_fn(step: int) -> dict[str, float]:
        images, boxes = batches(step)
        losses = model.losses(images, boxes)
        loss = losses["loss_objectness"] + losses["loss_box"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}, "grad_norm": float(grad_norm)}

    began = time.perf_counter()
    result = run_loop(
        out_dir=out,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=config.steps,
        step_fn=step_fn,
        checkpoint_every=config.checkpoint_every,
        desc=f"train rpn ({card.name})",
        samples_per_step=config.batch_size,
        run_info=asdict(config),
        max_steps_this_run=max_steps_this_run,
    )
    if needs_final_save(result, out):
        training = {
            "recipe": asdict(config),
            "data": f"EmojiWorld det-train split, {config.num_scenes} scenes at {config.image_size} px, "
            f"seed {config.world_seed}; labelled (base-concept) boxes only",
            "final_loss": result.metrics.get("loss"),
        }
        _log.info("saved proposal network to %s", save_final_model(model, out, training, began=began))
    return result
