"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

Each query looks at ``points`` sampled positions per head and per feature level instead of every
token: a linear layer predicts the sampling offsets around the query's *reference* (a point or a box)
and the attention weights of the ``levels * points`` samples. Sampling is bilinear
(:func:`torch.nn.functional.grid_sample`, ``align_corners=False``, zeros outside the map), so no
compiled extension is needed; :func:`ms_deform_attn_reference` is the same computation written as
explicit loops, kept for the parity test.

Shapes (``S`` = sum over levels of ``h * w`` tokens, row-major per level, levels concatenated):

* value ``(B, S, heads, head_dim)``;
* sampling locations ``(B, Q, heads, levels, points, 2)``, normalised ``(x, y)`` in [0, 1];
* attention weights ``(B, Q, heads, levels, points)``, summing to 1 over ``levels * points``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = Sequence[tuple[int, int]]  # (height, width) of each level


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample every level's value map at the sampling locations and take the weighted sum.

    One ``grid_sample`` call covers all levels: the level maps are stacked top to bottom on one zero
    canvas (``(B * heads, head_dim, sum h + L - 1, max w)``, one zero row between levels), and each
    location is moved to its level's band. A sample is clamped to at most one cell outside its map,
    where the canvas holds zeros (or ``grid_sample`` pads zeros), so it never reads a neighbouring level
    and gives exactly what sampling the level's own zero-padded map gives (a sample further out reads
    zeros either way). The per-level version cost one sampling call, one copy and one stack per level.

    Returns ``(B, Q, heads * head_dim)``.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    canvas, origins = _level_canvas(value, spatial_shapes)
    height, width = canvas.shape[-2:]
    # Pixel coordinates on each level (align_corners=False: pixel centres at +0.5), clamped to one cell
    # outside the map, moved to the level's band, normalised to the canvas' [-1, 1].
    wh = sampling_locations.new_tensor([[w, h] for h, w in spatial_shapes])[:, None, :]  # (L, 1, 2)
    shift = sampling_locations.new_tensor([[0.5, top + 0.5] for top in origins])[:, None, :]
    pixels = torch.minimum(torch.maximum(sampling_locations * wh - 0.5, wh.new_tensor(-1.0)), wh)
    grid = ((pixels + shift) * sampling_locations.new_tensor([2.0 / width, 2.0 / height]) - 1).to(canvas.dtype)
    grid = grid.transpose(1, 2).reshape(batch * heads, queries, levels * points, 2)
    sampled = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # (B * heads, head_dim, Q, levels * points) weighted over the last axis
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (sampled * weights.to(sampled.dtype)).sum(-1)  # (B * heads, head_dim, Q)
    return out.view(batch, heads * head_dim, queries).transpose(1, 2)


def _level_canvas(value: torch.Tensor, spatial_shapes: SpatialShapes) -> tuple[torch.Tensor, list[int]]:
    """``(B, S, heads, head_dim)`` -> the level maps stacked on one zero canvas
    ``(B * heads, head_dim, sum h + L - 1, max w)`` and the top row of each level."""
    batch, _, heads, head_dim = value.shape
    origins, top = [], 0
    for h, _ in spatial_shapes:
        origins.append(top)
        top += h + 1  # one zero row under each level
    width = max(w for _, w in spatial_shapes)
    # At least float32: CPU grid_sample is slower in bfloat16 (under autocast the values arrive in it).
    canvas = value.new_zeros(batch, heads, head_dim, top - 1, width, dtype=torch.promote_types(value.dtype, torch.float32))
    start = 0
    for (h, w), row in zip(spatial_shapes, origins):
        level = value[:, start : start + h * w].view(batch, h, w, heads, head_dim)
        canvas[:, :, :, row : row + h, :w] = level.permute(0, 3, 4, 1, 2)
        start += h * w
    return canvas.view(batch * heads, head_dim, top - 1, width), origins


def _bilinear(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``feature`` ``(h, w, C)`` at continuous pixel position ``(x, y)`` (pixel centres at integers), zero outside."""
    h, w, _ = feature.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = feature.new_zeros(feature.shape[-1])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out = out + wx * wy * feature[yy, xx]
    return out


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The definition of :func:`ms_deform_attn` as nested loops (slow; tests only)."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, _, points, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(batch, queries, heads, head_dim)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for level, (h, w) in enumerate(spatial_shapes):
                    feature = value[b, starts[level] : starts[level + 1], m].reshape(h, w, head_dim)
                    for p in range(points):
                        lx, ly = sampling_locations[b, q, m, level, p].tolist()
                        # align_corners=False: normalised 0 is the left edge of pixel 0, whose centre is 0.5 px.
                        sample = _bilinear(feature, lx * w - 0.5, ly * h - 0.5)
                        out[b, q, m] += attention_weights[b, q, m, level, p] * sample
    return out.reshape(batch, queries, heads * head_dim)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with learned offsets and weights.

    References are ``(N, Q, 2)`` points ``(x, y)`` or ``(N, Q, 4)`` boxes ``(cx, cy, w, h)``, normalised.
    Around a box, offsets are scaled by half the box size divided by ``points`` (Deformable DETR's box
    refinement); around a point -- or a box of zero width and height, which lets one call mix boxes and
    points -- offsets are in feature cells of each level.
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's initialisation: head m starts looking in direction 2 pi m / heads, point k at
        # distance k + 1, so before training the samples already cover a neighbourhood.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def project_value(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, S, dim)`` features -> ``(B, S, heads, head_dim)`` values (reusable across query sets)."""
        b, s, _ = features.shape
        return self.value_proj(features).view(b, s, self.heads, self.dim // self.heads)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        features: torch.Tensor,
        spatial_shapes: SpatialShapes,
        *,
        value_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` ``(N, Q, dim)`` to ``features`` ``(B, S, dim)``.

        Args:
            reference: ``(N, Q, 2)`` points or ``(N, Q, 4)`` boxes, normalised (see the class doc).
            value_index: ``(N,)`` which of the ``B`` feature maps each query set reads (default: ``N == B``,
                set ``n`` reads map ``n``). Several query sets can read one image without copying its
                projection more than once.
        Returns:
            ``(N, Q, dim)``.
        """
        n, q, _ = query.shape
        value = self.project_value(features)
        if value_index is None and value.shape[0] != n:
            raise ValueError(f"{n} query sets but {value.shape[0]} value maps; pass value_index")
        # Sampling positions stay in (at least) float32 under a bfloat16 autocast: bfloat16's 8-bit mantissa
        # would move a sample by up to half a cell on a 100-cell map.
        reference = reference.to(torch.promote_types(reference.dtype, torch.float32))
        offsets = self.sampling_offsets(query).to(reference.dtype).view(n, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, q, self.heads, self.levels, self.points)
        wh_levels = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=reference.dtype, device=query.device)
        cell_scale = (1.0 / wh_levels)[None, None, None, :, None, :]  # offsets in feature cells
        centre = reference[:, :, None, None, None, :2]
        if reference.shape[-1] == 2:
            scale = cell_scale
        elif reference.shape[-1] == 4:
            size = reference[:, :, None, None, None, 2:]
            is_point = (size <= 0).all(-1, keepdim=True)
            scale = torch.where(is_point, cell_scale, size * (0.5 / self.points))
        else:
            raise ValueError(f"reference must end in 2 (points) or 4 (boxes), got {tuple(reference.shape)}")
        locations = centre + offsets * scale
        if value_index is None:
            out = ms_deform_attn(value, spatial_shapes, locations, weights)
        else:
            out = _attend_by_image(value, spatial_shapes, locations, weights, value_index)
        return self.output_proj(out)


def _attend_by_image(value: torch.Tensor, spatial_shapes: SpatialShapes, locations: torch.Tensor,
                     weights: torch.Tensor, value_index: torch.Tensor) -> torch.Tensor:
    """:func:`ms_deform_attn` for N query sets reading B <= N value maps (``value_index`` ``(N,)``).

    The query sets of each image are laid side by side in one row of that image (unused slots get zero
    weight), so every value map is sampled in place; gathering a copy of the map per query set would
    cost N full-size copies and their gradients.
    """
    n, q = locations.shape[:2]
    images = value.shape[0]
    counts = torch.bincount(value_index, minlength=images)
    # slot of each query set among those of its image (stable order)
    order = torch.argsort(value_index, stable=True)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(value_index)
    slot[order] = torch.arange(n, device=value_index.device) - first[value_index[order]]
    width = int(counts.max()) * q
    columns = (slot[:, None] * q + torch.arange(q, device=slot.device)).reshape(-1)  # (N * Q,)
    rows = value_index.repeat_interleave(q)
    grid_loc = locations.new_zeros((images, width, *locations.shape[2:]))
    grid_w = weights.new_zeros((images, width, *weights.shape[2:]))
    grid_loc = grid_loc.index_put((rows, columns), locations.reshape(n * q, *locations.shape[2:]))
    grid_w = grid_w.index_put((rows, columns), weights.reshape(n * q, *weights.shape[2:]))
    out = ms_deform_attn(value, spatial_shapes, grid_loc, grid_w)  # (B, width, C)
    return out[rows, columns].view(n, q, -1)
