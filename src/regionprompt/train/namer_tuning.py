"""A region namer tuned on base boxes: the RegionCLIP transfer's image tower, mixed with the one it started from.

The T-Rex2 default names its text-prompted boxes with a RegionCLIP region encoder (see
:mod:`regionprompt.detect.region_namer`). Fine-tuning that encoder on base-concept boxes
(:mod:`regionprompt.train.ov_transfer`, foreground RoIs only) teaches it the base names, which
region-text pretraining alone recognises poorly (13 % top-1 among 1,177 names); the novel names, never
boxed, are what the starting encoder knew. Interpolating the two in weight space,
``mix * tuned + (1 - mix) * start`` (WiSE-FT, Wortsman et al. 2022), keeps much of both at no cost at
inference; ``mix`` is chosen on ``val``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from regionprompt.errors import RegionPromptError
from regionprompt.interop.checkpoints import load_checkpoint
from regionprompt.train.checkpointing import load_train_state
from regionprompt.vl.clip_model import RegionPromptCLIP


def mix_towers(clip: RegionPromptCLIP, tuned: Mapping[str, torch.Tensor], mix: float) -> RegionPromptCLIP:
    """Set ``clip``'s image tower to ``mix * tuned + (1 - mix) * its own`` (in place; returned).

    ``tuned`` is an image-tower state dict (keys of ``clip.visual``). Integer buffers (BatchNorm's
    counters) are taken from ``tuned``: the transfer froze BatchNorm, so its statistics are the start's.
    """
    if not 0.0 <= mix <= 1.0:
        raise RegionPromptError(f"the namer mix must lie in [0, 1], got {mix}")
    start = clip.visual.state_dict()
    if set(tuned) != set(start):
        raise RegionPromptError("the tuned image tower does not match the starting model's (other architecture)")
    clip.visual.load_state_dict({k: (mix * v.to(start[k].dtype) + (1 - mix) * start[k]) if v.is_floating_point() else v
                                 for k, v in tuned.items()})
    return clip


def tuned_tower(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """The image tower of a ``train detector --arch regionclip`` checkpoint, its step and its run info."""
    state = load_train_state(Path(checkpoint))
    tower = {k.removeprefix("visual."): v for k, v in state.model.items() if k.startswith("visual.")}
    if not tower:
        raise RegionPromptError(f"{checkpoint} holds no RegionCLIP transfer image tower (visual.*)")
    return tower, state.step, dict(state.extra.get("run_info", {}))


def tuned_namer(start: str | Path, tuned: Mapping[str, torch.Tensor], mix: float,
                training: Mapping[str, Any]) -> RegionPromptCLIP:
    """The starting CLIP folder with its image tower mixed toward ``tuned``; the card records ``training``."""
    clip = load_checkpoint(start)
    started = clip.card.weights_hash or clip.weights_hash()
    mix_towers(clip, tuned, mix)
    clip.card = clip.card.with_updates(weights_hash=None, training={
        **dict(training), "mix": mix, "initial_clip": {"folder": str(start), "weights_hash": started,
                                                       "training": dict(clip.card.training)}})
    return clip


__all__ = ["mix_towers", "tuned_namer", "tuned_tower"]
