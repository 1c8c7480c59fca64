"""Visual prompt encoder: boxes or points drawn on an image -> one prompt embedding per category.

For each group of prompts (one category on one image, :class:`VisualPromptBatch`):

1. every box ``(cx, cy, w, h)`` / point ``(x, y)`` gets a fixed sine encoding, then a linear layer
   (one for boxes, one for points): the prompt's position embedding ``B``;
2. every prompt's query starts as a learned content embedding ``C`` (shared by all prompts) plus its
   ``B``; a universal class token ``C'`` is added whose box is the whole image;
3. ``layers`` times: deformable cross-attention to the encoder tokens sampled around each query's
   box or point, self-attention among the group's queries (class token included; padding masked), FFN;
4. the class token's output, normalised and projected, is the category's visual prompt embedding.

Several prompts of one category on one image give one embedding (step 3 mixes them); across images
(the generic workflow) the per-image embeddings are averaged (:func:`mean_embedding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.trex2.deform_attn import MSDeformAttn
from regionprompt.trex2.encoder import FeedForward
from regionprompt.trex2.position import WHOLE_IMAGE_BOX, sine_encode
from regionprompt.trex2.structures import EncodedImages, VisualPromptBatch
from regionprompt.vl.embeddings import mean_embedding  # noqa: F401 -- the generic workflow's averaging, as before


class PromptLayer(nn.Module):
    """Deformable cross-attention around each prompt, self-attention among a group's prompts, FFN."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, q: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, encoded: EncodedImages,
                image_index: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``q``, ``pos`` ``(G, 1 + P, dim)``; ``reference`` ``(G, 1 + P, 4)``; ``padding`` ``(G, 1 + P)`` True = ignore."""
        attended = self.cross_attn(q + pos, reference, encoded.memory, encoded.spatial_shapes, value_index=image_index)
        q = self.norm1(q + self.dropout(attended))
        qk = q + pos
        mixed = self.self_attn(qk, qk, q, key_padding_mask=padding, need_weights=False)[0]
        q = self.norm2(q + self.dropout(mixed))
        return self.ffn(q)


class VisualPromptEncoder(nn.Module):
    """Prompt groups + encoded images -> ``(G, dim)`` L2-normalised visual prompt embeddings."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, layers: int, ffn_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.box_proj = nn.Linear(4 * (dim // 2), dim)
        self.point_proj = nn.Linear(2 * (dim // 2), dim)
        self.content = nn.Parameter(torch.randn(dim) * 0.02)  # C: every prompt's content query
        self.class_content = nn.Parameter(torch.randn(dim) * 0.02)  # C': the universal class token
        self.layers = nn.ModuleList(PromptLayer(dim, heads, levels, points, ffn_dim, dropout) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)

    def position(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 4)`` boxes or ``(..., 2)`` points, normalised -> ``(..., dim)`` position embeddings."""
        proj = self.box_proj if coords.shape[-1] == 4 else self.point_proj
        return proj(sine_encode(coords, self.dim // 2))

    def forward(self, encoded: EncodedImages, prompts: VisualPromptBatch) -> torch.Tensor:
        """Returns ``(G, dim)``, one embedding per prompt group (its class token's output)."""
        groups, count = prompts.mask.shape
        if groups == 0:
            return encoded.memory.new_zeros(0, self.dim)
        coords = prompts.coords.to(encoded.memory.dtype)
        pos = self.position(coords)
        # A point is a zero-size box: deformable attention then samples a few cells around it.
        reference = coords if prompts.kind == "box" else torch.cat([coords, torch.zeros_like(coords)], dim=-1)
        whole = coords.new_tensor(WHOLE_IMAGE_BOX).expand(groups, 1, 4)
        class_pos = self.position(whole)
        pos = torch.cat([class_pos, pos], dim=1)
        reference = torch.cat([whole, reference], dim=1)
        content = torch.cat([self.class_content.expand(groups, 1, -1), self.content.expand(groups, count, -1)], dim=1)
        q = content + pos
        padding = torch.cat([prompts.mask.new_zeros(groups, 1), ~prompts.mask], dim=1)
        image_index = prompts.image_index.to(encoded.memory.device)
        for layer in self.layers:
            q = layer(q, pos, reference, encoded, image_index, padding)
        return F.normalize(self.out_proj(self.out_norm(q[:, 0])), dim=-1)


class TextPromptProjection(nn.Module):
    """Text embeddings of the frozen text side ``(K, text_dim)`` -> ``(K, dim)`` L2-normalised prompt embeddings."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, dim)

    def forward(self, text_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(text_features), dim=-1)
