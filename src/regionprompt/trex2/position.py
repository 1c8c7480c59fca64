"""Fixed sinusoidal encodings of coordinates and feature-map grids, and the logit-space box helpers.

Every coordinate here is normalised to ``[0, 1]`` of the image (x by width, y by height); boxes are
``cxcywh``. The encodings follow DETR / DINO: each scalar ``c`` becomes ``sin(2 pi c / T^(2i/n))`` and
``cos(...)`` for ``i < n / 2``.
"""

from __future__ import annotations

import math

import torch

TEMPERATURE = 10000.0


def sine_encode(coords: torch.Tensor, num_feats: int, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``(..., C)`` coordinates in [0, 1] -> ``(..., C * num_feats)``: interleaved sin/cos per coordinate.

    ``num_feats`` must be even (half sines, half cosines).
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    dim_t = torch.arange(num_feats // 2, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * dim_t / num_feats)
    angles = coords.float()[..., None] * (2 * math.pi) / dim_t  # (..., C, n/2)
    enc = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., C, n)
    return enc.flatten(-2).to(coords.dtype if coords.is_floating_point() else torch.float32)


def grid_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``(height * width, 2)`` normalised ``(x, y)`` centres of a feature grid's cells, row-major."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1)


def grid_position_embedding(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """``(height * width, dim)`` 2-D sine embedding of a feature grid (y features then x features, as DETR)."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    xy = grid_centres(height, width, device)
    return sine_encode(xy[:, [1, 0]], dim // 2)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logit of ``x`` clamped to ``[eps, 1 - eps]`` (boxes are refined in logit space)."""
    x = x.clamp(min=eps, max=1 - eps)
    return torch.log(x / (1 - x))


WHOLE_IMAGE_BOX = (0.5, 0.5, 1.0, 1.0)  # cxcywh of the universal class token's box
