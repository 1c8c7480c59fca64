"""Contrastive denoising queries (DINO) for prompt-driven detection.

During training, extra decoder queries start from noised ground-truth boxes, with the *prompt
embedding* of the object's category (possibly swapped for another prompt: label noise) as content.
Positives (noise below half the box size) must reconstruct their object; negatives (noise between
one half and one box size) must predict "no object". The decoder's attention mask keeps the matching
queries from seeing the denoising ones (they would see the answers) and the groups from seeing each
other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_convert

from regionprompt.trex2.structures import DenoisingLayout, DetectionTarget


@dataclass(frozen=True)
class DenoisingQueries:
    """Attributes:
        labels: ``(B, pad)`` long prompt column each query's content comes from (0 in padding slots).
        valid: ``(B, pad)`` bool, False for padding slots (images with fewer objects than the most).
        reference: ``(B, pad, 4)`` cxcywh normalised noised boxes.
        attn_mask: ``(pad + Q, pad + Q)`` bool for the decoder's self-attention, True = may not attend.
        layout: where positives sit and what they reconstruct.
    """

    labels: torch.Tensor
    valid: torch.Tensor
    reference: torch.Tensor
    attn_mask: torch.Tensor
    layout: DenoisingLayout


def build_denoising_queries(
    targets: Sequence[DetectionTarget],
    num_queries: int,
    num_columns: int,
    *,
    max_queries: int = 100,
    label_noise: float = 0.5,
    box_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Noised copies of every target in ``groups = max_queries // (2 * max objects)`` groups.

    Args:
        targets: one :class:`DetectionTarget` per image.
        num_queries: matching queries that follow the denoising ones in the decoder.
        num_columns: prompt embeddings of the step (label noise draws among them).
        max_queries: budget of denoising queries (positives + negatives, all groups).
        label_noise: a label is swapped for a random column with probability ``label_noise / 2`` (DINO).
        box_noise: corners move by up to ``box_noise * size / 2`` (positives) or between 1x and 2x that (negatives).
    Returns:
        None when no image has an object (nothing to denoise).
    """
    counts = [len(t) for t in targets]
    most = max(counts, default=0)
    if most == 0 or num_columns == 0:
        return None
    groups = max(1, max_queries // (2 * most))
    pad = groups * 2 * most
    device = targets[0].boxes.device
    batch = len(targets)
    labels = torch.zeros(batch, pad, dtype=torch.long, device=device)
    valid = torch.zeros(batch, pad, dtype=torch.bool, device=device)
    reference = torch.full((batch, pad, 4), 0.5, device=device)
    positive_index, positive_target = [], []
    for b, target in enumerate(targets):
        n = len(target)
        if n == 0:
            positive_index.append(torch.zeros(0, dtype=torch.long, device=device))
            positive_target.append(torch.zeros(0, dtype=torch.long, device=device))
            continue
        # Slot layout per group g: [g * 2m, g * 2m + n) positives, [g * 2m + m, g * 2m + m + n) negatives.
        starts = torch.arange(groups, device=device) * 2 * most
        pos_slots = (starts[:, None] + torch.arange(n, device=device)).reshape(-1)
        neg_slots = pos_slots + most
        obj = torch.arange(n, device=device).repeat(groups)
        slots = torch.cat([pos_slots, neg_slots])
        objects = torch.cat([obj, obj])
        lab = target.labels[objects].clone()
        # Noise is drawn where the generator lives (a CPU generator gives the same noise on every device).
        noise_at = generator.device if generator is not None else device
        flip = torch.rand(lab.shape, generator=generator, device=noise_at).to(device) < label_noise * 0.5
        lab[flip] = torch.randint(0, num_columns, (int(flip.sum()),), generator=generator, device=noise_at).to(device)
        xyxy = box_convert(target.boxes[objects], "cxcywh", "xyxy")
        half = target.boxes[objects][:, 2:].repeat(1, 2) / 2
        sign = torch.randint(0, 2, xyxy.shape, generator=generator, device=noise_at).to(device).float() * 2 - 1
        part = torch.rand(xyxy.shape, generator=generator, device=noise_at).to(device)
        part[len(pos_slots):] += 1.0  # negatives: at least one half-size away
        noised = (xyxy + sign * part * half * box_noise).clamp(0.0, 1.0)
        labels[b, slots] = lab
        valid[b, slots] = True
        reference[b, slots] = box_convert(noised, "xyxy", "cxcywh")
        positive_index.append(pos_slots)
        positive_target.append(obj)
    total = pad + num_queries
    attn_mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    attn_mask[pad:, :pad] = True  # matching queries never see the denoising ones
    for g in range(groups):
        lo, hi = g * 2 * most, (g + 1) * 2 * most
        attn_mask[lo:hi, :lo] = True
        attn_mask[lo:hi, hi:pad] = True
    layout = DenoisingLayout(groups, most, tuple(positive_index), tuple(positive_target))
    return DenoisingQueries(labels, valid, reference, attn_mask, layout)
