"""Box decoder (DINO family) driven by prompt embeddings.

* :class:`PromptClassifier` -- classification is a similarity: ``scale * cos(W q, e_k) + bias`` between
  a query ``q`` and each prompt embedding ``e_k`` (sigmoid per prompt, so any vocabulary works).
* :class:`QuerySelection` -- every encoder token is scored against the prompts; the top-k tokens by
  best prompt score give the decoder's initial reference boxes (anchor per token refined by a box
  head), "prompt-driven query selection"; contents are learned embeddings (DINO's mixed selection).
* :class:`Decoder` -- layers of self-attention, deformable cross-attention around each query's
  reference box and FFN; after each layer a shared box head refines the box in logit space
  (iterative refinement, gradients stopped between layers) and the classifier scores it. During
  training, denoising queries (:mod:`~regionprompt.trex2.denoising`) go first.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.trex2.deform_attn import MSDeformAttn
from regionprompt.trex2.denoising import DenoisingQueries
from regionprompt.trex2.encoder import FeedForward
from regionprompt.trex2.position import grid_centres, inverse_sigmoid, sine_encode
from regionprompt.trex2.structures import EncodedImages, LayerPredictions

PRIOR_PROB = 0.01  # initial foreground probability (RetinaNet / DETR focal-loss prior)


class MLP(nn.Module):
    """``layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def box_head(dim: int) -> MLP:
    """3-layer MLP predicting a box delta in logit space; zero-initialised so it starts at the reference."""
    head = MLP(dim, dim, 4, 3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


class PromptClassifier(nn.Module):
    """``(B, Q, D)`` queries x ``(K, D)`` L2-normalised prompts -> ``(B, Q, K)`` logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - PRIOR_PROB) / PRIOR_PROB)))

    def forward(self, queries: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.exp().clamp(max=100.0)
        return scale * F.normalize(self.proj(queries), dim=-1) @ prompts.t() + self.bias


class QuerySelection(nn.Module):
    """Top-k encoder tokens by their best prompt score -> initial reference boxes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.classifier = PromptClassifier(dim)
        self.box_head = box_head(dim)

    @staticmethod
    def anchors(spatial_shapes: tuple[tuple[int, int], ...], device: torch.device) -> torch.Tensor:
        """``(S, 4)`` cxcywh anchor per token: its cell centre, side ``0.05 * 2^level`` (DINO)."""
        parts = []
        for level, (h, w) in enumerate(spatial_shapes):
            centres = grid_centres(h, w, device)
            parts.append(torch.cat([centres, torch.full_like(centres, 0.05 * 2.0**level)], dim=-1))
        return torch.cat(parts)

    def forward(self, encoded: EncodedImages, prompts: torch.Tensor, k: int, *,
                selecting: torch.Tensor | None = None) -> tuple[LayerPredictions, torch.Tensor]:
        """Returns the selected tokens' predictions (``(B, k, K)`` logits, ``(B, k, 4)`` boxes) and their
        boxes detached as the decoder's references ``(B, k, 4)``.

        ``selecting``: ``(K,)`` bool, the prompts whose scores pick the tokens (default all). The same
        choice as passing only those prompts, but with a prompt count that does not depend on it: an
        exported graph takes the mask as an input (:mod:`regionprompt.detect.onnx_graphs`)."""
        memory = self.norm(self.output(encoded.memory))
        logits = self.classifier(memory, prompts)  # (B, S, K)
        # Boxes in float32 at least: under a bfloat16 autocast a bfloat16 box is off by up to 1/256 of the image.
        anchors = inverse_sigmoid(self.anchors(encoded.spatial_shapes, memory.device))
        anchors = anchors.to(torch.promote_types(memory.dtype, torch.float32))
        boxes = (self.box_head(memory) + anchors).sigmoid()
        if selecting is not None:
            score = logits.masked_fill(~selecting, float("-inf")).max(-1).values
        else:
            score = logits.max(-1).values if logits.shape[-1] else torch.zeros_like(memory[..., 0])
        k = min(k, memory.shape[1])
        index = score.topk(k, dim=1).indices  # (B, k)
        top_logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
        top_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
        return LayerPredictions(top_logits, top_boxes), top_boxes.detach()


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention around each reference box, FFN."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, tgt: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, encoded: EncodedImages,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        qk = tgt + pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt, attn_mask=attn_mask, need_weights=False)[0]))
        attended = self.cross_attn(tgt + pos, reference, encoded.memory, encoded.spatial_shapes)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.ffn(tgt)


class Decoder(nn.Module):
    """Queries + references + prompts -> per-layer predictions (and denoising predictions in training)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, layers: int, ffn_dim: int,
                 num_queries: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.content = nn.Embedding(num_queries, dim)
        self.dn_content = nn.Linear(dim, dim)  # a denoising query's content from its prompt embedding
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, levels, points, ffn_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.box_head = box_head(dim)
        self.classifier = PromptClassifier(dim)

    def forward(
        self, encoded: EncodedImages, prompts: torch.Tensor, reference: torch.Tensor,
        denoising: DenoisingQueries | None = None,
    ) -> tuple[list[LayerPredictions], list[LayerPredictions]]:
        """``reference`` ``(B, Q, 4)`` cxcywh from query selection; returns (matching predictions per layer,
        denoising predictions per layer -- empty without ``denoising``)."""
        batch, queries = reference.shape[:2]
        tgt = self.content.weight[:queries][None].expand(batch, -1, -1)
        attn_mask, pad = None, 0
        if denoising is not None:
            pad = denoising.labels.shape[1]
            dn_tgt = self.dn_content(prompts[denoising.labels]) * denoising.valid[..., None].to(tgt.dtype)
            tgt = torch.cat([dn_tgt, tgt], dim=1)
            reference = torch.cat([denoising.reference.to(reference.dtype), reference], dim=1)
            attn_mask = denoising.attn_mask
        matching, noised = [], []
        for layer in self.layers:
            pos = self.ref_point_head(sine_encode(reference, self.dim // 2))
            tgt = layer(tgt, pos, reference, encoded, attn_mask)
            out = self.norm(tgt)
            boxes = (self.box_head(out) + inverse_sigmoid(reference)).sigmoid()
            logits = self.classifier(out, prompts)
            matching.append(LayerPredictions(logits[:, pad:], boxes[:, pad:]))
            if denoising is not None:
                noised.append(LayerPredictions(logits[:, :pad], boxes[:, :pad]))
            reference = boxes.detach()
        return matching, noised
