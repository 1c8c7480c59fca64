"""Learning-rate schedules."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup: int, total: int, floor: float = 0.0) -> float:
    """Multiplier of the base learning rate: linear warm-up over ``warmup`` steps, then a cosine
    decay to ``floor`` at ``total`` steps (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
