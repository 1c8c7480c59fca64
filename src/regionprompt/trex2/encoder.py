"""Image side of T-Rex2 after the backbone: input projection + deformable transformer encoder.

The CLIP image tower's ``res3``/``res4``/``res5`` maps (strides 8/16/32) are projected to ``dim``
channels (1x1 conv + GroupNorm, as Deformable DETR), flattened and concatenated into one token
sequence, and refined by encoder layers in which every token attends, with deformable attention, to
a few points around its own cell on every level. Tokens carry a 2-D sine position embedding plus a
learned embedding of their level.

All images of a batch have the same size, so there is no padding mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from regionprompt.trex2.deform_attn import MSDeformAttn
from regionprompt.trex2.position import grid_centres, grid_position_embedding
from regionprompt.trex2.structures import EncodedImages


class FeedForward(nn.Module):
    """``x + MLP(x)`` then LayerNorm (post-norm, as Deformable DETR)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.net(x)))


class InputProjection(nn.Module):
    """Backbone maps with per-level channels -> ``dim`` channels each (1x1 conv + GroupNorm)."""

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        groups = 32 if dim % 32 == 0 else 1
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, kernel_size=1), nn.GroupNorm(groups, dim)) for c in in_channels
        )
        for level in self.levels:
            nn.init.xavier_uniform_(level[0].weight, gain=1)
            nn.init.zeros_(level[0].bias)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``L`` maps ``(B, C_l, h_l, w_l)`` -> ``L`` maps ``(B, dim, h_l, w_l)``."""
        return [proj(x) for proj, x in zip(self.levels, maps)]


class EncoderLayer(nn.Module):
    """Deformable self-attention of every token around its own position, then FFN."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = MSDeformAttn(dim, heads, levels, points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``x`` ``(B, S, dim)``, ``pos`` ``(1 or B, S, dim)``, ``reference`` ``(B, S, 2)`` -> ``(B, S, dim)``."""
        x = self.norm(x + self.dropout(self.attn(x + pos, reference, x, spatial_shapes)))
        return self.ffn(x)


class DeformableEncoder(nn.Module):
    """Multi-scale backbone maps -> :class:`EncodedImages`.

    Args:
        in_channels: channels of each backbone level, fine to coarse.
        dim, heads, points, layers, ffn_dim, dropout: transformer sizes.
    """

    def __init__(self, in_channels: Sequence[int], dim: int, heads: int, points: int, layers: int,
                 ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_levels = len(in_channels)
        self.input_proj = InputProjection(in_channels, dim)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, dim))
        nn.init.normal_(self.level_embed)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, self.num_levels, points, ffn_dim, dropout) for _ in range(layers)
        )

    def positions(self, spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """``(1, S, dim)`` sine position + level embedding of every token."""
        parts = [grid_position_embedding(h, w, self.dim, device) + self.level_embed[i]
                 for i, (h, w) in enumerate(spatial_shapes)]
        return torch.cat(parts)[None]

    def forward(self, maps: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> EncodedImages:
        """Backbone maps (fine to coarse; a dict is read in insertion order) -> encoded tokens."""
        levels = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
        if len(levels) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(levels)}")
        projected = self.input_proj(levels)
        shapes = tuple((int(x.shape[2]), int(x.shape[3])) for x in projected)
        x = torch.cat([p.flatten(2).transpose(1, 2) for p in projected], dim=1)
        pos = self.positions(shapes, x.device).to(x.dtype)
        reference = torch.cat([grid_centres(h, w, x.device) for h, w in shapes])
        # float32 at least: under a bfloat16 autocast the tokens are bfloat16, cell centres must not be.
        reference = reference[None].expand(x.shape[0], -1, -1).to(torch.promote_types(x.dtype, torch.float32))
        for layer in self.layers:
            x = layer(x, pos, reference, shapes)
        return EncodedImages(memory=x, spatial_shapes=shapes)
