"""The student's three RegionCLIP losses, as pure functions of embeddings and logits.

All similarities are cosines of L2-normalised embeddings divided by a fixed temperature (0.01 in
the paper). Each function returns a scalar; the training recipe weights and sums them
(:mod:`regionprompt.train.regions`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) over the whole concept pool, averaged over regions.

    Args:
        student_logits: ``(R, C)`` student cosine / T.
        teacher_probs: ``(R, C)`` teacher softmax(cosine / T).
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    return F.kl_div(F.log_softmax(student_logits, dim=-1), teacher_probs, reduction="batchmean")


def topk_distillation_loss(student_logits: torch.Tensor, topk_index: torch.Tensor, topk_prob: torch.Tensor) -> torch.Tensor:
    """KL from the teacher's stored top-k distribution (renormalised over its k concepts) to the student's.

    The cheap variant of :func:`region_distillation_loss` (no teacher forward pass): at T = 0.01 the
    teacher's softmax is peaked, so its top few concepts carry nearly all the mass.

    Args:
        student_logits: ``(R, C)`` student cosine / T over the whole pool.
        topk_index: ``(R, k)`` pool indices; ``topk_prob``: ``(R, k)`` their teacher probabilities.
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    target = topk_prob.float().clamp_min(1e-8)
    target = target / target.sum(dim=-1, keepdim=True)
    student_log = F.log_softmax(student_logits, dim=-1).gather(1, topk_index)
    return (target * (target.log() - student_log)).sum(dim=-1).mean()


def concept_contrastive_loss(region_emb: torch.Tensor, concept_emb: torch.Tensor, labels: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """Region-concept contrastive loss over the concepts present in the batch (MIL cross-entropy).

    Logits are ``region_emb @ concept_emb[U].T / T`` for the batch's distinct pseudo labels ``U``.
    Two halves, averaged: each region against the batch's concepts (its pseudo label is the positive),
    and each concept against the batch's regions, where *every* region carrying that concept is a
    positive (multiple-instance: ``-log`` of the softmax mass on all of them).

    Args:
        region_emb: ``(R, D)`` normalised student region embeddings.
        concept_emb: ``(C, D)`` normalised pool embeddings.
        labels: ``(R,)`` int64 pool index of each region's pseudo label.
    """
    if region_emb.shape[0] == 0:
        return region_emb.sum() * 0.0
    concepts, target = torch.unique(labels, return_inverse=True)  # target: (R,) index into concepts
    logits = region_emb @ concept_emb[concepts].t() / temperature  # (R, U)
    region_to_concept = F.cross_entropy(logits, target)
    positives = target[:, None] == torch.arange(len(concepts), device=target.device)[None, :]  # (R, U)
    log_p = F.log_softmax(logits.t(), dim=-1)  # (U, R): each concept over the regions
    concept_to_region = -torch.logsumexp(log_p.masked_fill(~positives.t(), float("-inf")), dim=-1).mean()
    return 0.5 * (region_to_concept + concept_to_region)


def image_text_loss(image_emb: torch.Tensor, caption_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between ``(B, D)`` whole-image region embeddings and their captions' ``(B, D)``."""
    logits = image_emb @ caption_emb.t() / temperature
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
