"""Negative prompts on look-alike categories: how many false positives do they remove, at what cost?

Pairs: among the categories with boxes in the evaluated images, the ``pairs`` most similar unordered
pairs by cosine of the model's OWN prompt embeddings (the text embeddings of the names for
``negative_kind="text"``; the mean exemplar embeddings for ``"visual"``) -- the pairs this model is
most likely to confuse ("dog" vs "dog face", two cat emoji).

For each pair {A, B} and each direction (A positive with B negative, then the reverse), on the images
that hold A or B, the detector searches for A twice:

* without negatives: concept A alone;
* with negatives: concept A with B as its negative prompt (:meth:`Detector.make_concept`), like with
  like (a phrase against a phrase, exemplars against exemplars).

Measured at score >= ``fp_threshold`` (a user's operating point; the AP uses every detection):

* look-alike false positives: detections of A whose best-overlapping ground-truth box (IoU >=
  ``match_iou``) is a box of B;
* found: boxes of A that are the best match of a detection of A;
* AP / AP50 of A on those images (COCO, ``max_detections`` per image).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import box_iou

from regionprompt.api import Detector
from regionprompt.concept import PromptConcept
from regionprompt.errors import EvaluationError
from regionprompt.eval.coco_eval import evaluate_detections
from regionprompt.eval.detector_eval_config import DetectorEvalConfig
from regionprompt.eval.detector_runner import generic_concepts, predict_units, proposals_for
from regionprompt.eval.eval_set import (
    EvalImage,
    EvalSet,
    Exemplar,
    ResultLog,
    pick_exemplars,
)
from regionprompt.eval.report import percent
from regionprompt.logging_utils import get_logger
from regionprompt.results import Detections

LOG = get_logger("eval.lookalike")


@dataclass(frozen=True)
class LookalikeStats:
    """Detections of the positive category on a pair's images (counts at ``fp_threshold``).

    Attributes:
        detections: detections of the positive category scoring >= ``fp_threshold``.
        lookalike_fp: those whose best ground-truth match (IoU >= ``match_iou``) is a look-alike box.
        found: positive-category boxes that are the best match of such a detection.
        positives: positive-category boxes on the images.
        lookalikes: look-alike boxes on the images.
        ap: COCO AP of the positive category (every detection, ``max_detections`` per image).
        ap50: AP at IoU 0.5.
    """

    detections: int
    lookalike_fp: int
    found: int
    positives: int
    lookalikes: int
    ap: float | None
    ap50: float | None


@dataclass(frozen=True)
class PairResult:
    """One direction of a look-alike pair: ``positive`` searched for, ``negative`` its look-alike."""

    positive: str
    negative: str
    similarity: float
    images: int
    without: LookalikeStats
    with_negatives: LookalikeStats


def most_similar_pairs(embeddings: torch.Tensor, count: int) -> list[tuple[int, int, float]]:
    """The ``count`` most similar unordered pairs ``(i, j, cosine)``, ``i < j``, most similar first.

    Args:
        embeddings: ``(N, D)`` L2-normalised rows.
    """
    n = int(embeddings.shape[0])
    if n < 2:
        return []
    sims = embeddings.float() @ embeddings.float().t()
    rows, cols = torch.triu_indices(n, n, offset=1)
    values = sims[rows, cols]
    order = torch.argsort(values, descending=True, stable=True)[:count]
    return [(int(rows[k]), int(cols[k]), float(values[k])) for k in order]


def count_hits(results: Sequence[Mapping[str, Any]], image: EvalImage, positive_id: int, negative_id: int, *,
               threshold: float, match_iou: float) -> tuple[int, int, set[int]]:
    """``(detections, look-alike false positives, indices of found positive boxes)`` on one image.

    ``results``: COCO result dicts (``bbox`` xywh pixels) of the positive category on ``image``.
    """
    kept = [r for r in results if r["score"] >= threshold]
    if not kept or len(image.boxes) == 0:
        return len(kept), 0, set()
    xywh = torch.tensor([r["bbox"] for r in kept], dtype=torch.float32)
    xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    best_iou, best = box_iou(xyxy, image.boxes).max(dim=1)
    false_positives, found = 0, set()
    for iou, index in zip(best_iou.tolist(), best.tolist()):
        if iou < match_iou:
            continue
        category = image.category_ids[index]
        if category == negative_id:
            false_positives += 1
        elif category == positive_id:
            found.add(index)
    return len(kept), false_positives, found


def _stats(data: EvalSet, images: Sequence[EvalImage], results: list[dict[str, Any]], positive_id: int,
           negative_id: int, config: DetectorEvalConfig) -> LookalikeStats:
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    detections = false_positives = found = 0
    for image in images:
        d, fp, hits = count_hits(by_image.get(image.id, []), image, positive_id, negative_id,
                                 threshold=config.fp_threshold, match_iou=config.match_iou)
        detections, false_positives, found = detections + d, false_positives + fp, found + len(hits)
    gt = data.restricted(images=[im.id for im in images], categories=[positive_id])
    row = evaluate_detections(gt, results, max_dets=config.max_detections).category(positive_id)
    count = sum(c == positive_id for im in images for c in im.category_ids)
    lookalikes = sum(c == negative_id for im in images for c in im.category_ids)
    return LookalikeStats(detections, false_positives, found, count, lookalikes, row.ap, row.ap50)


def evaluate_negatives(detector: Detector, data: EvalSet, config: DetectorEvalConfig, log: ResultLog, *,
                       exemplar_set: EvalSet | None = None) -> tuple[list[PairResult], dict[str, int], tuple[str, ...]]:
    """The look-alike protocol (module docstring) -> one :class:`PairResult` per pair direction."""
    present = data.present_category_ids()
    names = [data.names[c] for c in present]
    picks: dict[str, list[Exemplar]] = {}
    if config.negative_kind == "visual":
        if exemplar_set is None:
            raise EvaluationError("visual negatives need an exemplar set (a separate build)")
        picks = pick_exemplars(exemplar_set, names, images_per_category=config.exemplar_images, seed=config.seed)
        names = [n for n in names if n in picks]
        concepts = generic_concepts(detector, {n: picks[n] for n in names})
    else:
        concepts = detector.make_concepts(text=names, max_prompts=None) if names else []
    if len(concepts) < 2:
        raise EvaluationError(f"need two or more categories with boxes in the evaluated images "
                              f"(and exemplars, for visual negatives) to form look-alike pairs; found {len(concepts)}")
    by_name = {c.name: c for c in concepts}
    ids = data.ids_by_name()
    pairs = most_similar_pairs(torch.stack([c.embedding for c in concepts]), config.pairs)
    LOG.info("look-alike pairs: %s", ", ".join(f"{concepts[i].name} ~ {concepts[j].name} ({s:.3f})" for i, j, s in pairs))
    out = []
    for i, j, similarity in pairs:
        for a, b in ((concepts[i].name, concepts[j].name), (concepts[j].name, concepts[i].name)):
            a_id, b_id = ids[a], ids[b]
            images = [im for im in data.images if a_id in im.category_ids or b_id in im.category_ids]
            if config.negative_kind == "visual":
                negative = detector.make_concept(a, boxes=[ex.prompt(a) for ex in picks[a]],
                                                 negatives=[{"box": ex.box, "image": str(ex.path)} for ex in picks[b]])
            else:
                negative = detector.make_concept(a, text=[a], negatives=[b])
            stats = []
            for variant, concept in (("without", by_name[a]), ("with", negative)):
                results = _search(detector, images, concept, config, log, data, key=f"neg:{a_id}>{b_id}:{variant}")
                stats.append(_stats(data, images, results, a_id, b_id, config))
            out.append(PairResult(a, b, round(similarity, 4), len(images), stats[0], stats[1]))
    counts = {"images": len(data.images), "candidate_categories": len(concepts), "pairs": len(pairs),
              "directions": len(out)}
    notes = ((f"negative prompts: {config.negative_kind} against {config.negative_kind} (like with like); pairs are the "
             "most similar by the model's own prompt embeddings; each pair is run in both directions on the images "
             "holding either category"),
             (f"false positives and found boxes count detections scoring >= {config.fp_threshold} at IoU >= "
             f"{config.match_iou}; AP uses every detection"))
    return out, counts, notes


def _search(detector: Detector, images: Sequence[EvalImage], concept: PromptConcept, config: DetectorEvalConfig,
            log: ResultLog, data: EvalSet, *, key: str) -> list[dict[str, Any]]:
    def run(batch: list[EvalImage]) -> list[Detections]:
        return detector.predict([str(im.path) for im in batch], concepts=[concept],
                                proposals=proposals_for(batch, config), threshold=config.threshold)

    units = [(f"{key}:{image.id}", image) for image in images]
    return predict_units(units, run, data.ids_by_name(), log, batch_size=config.batch_size, desc=f"detect ({concept.name})")


def pair_totals(pairs: Sequence[PairResult]) -> dict[str, float | None]:
    """Sums over pair directions, and the mean AP50 of the positive category without / with negatives."""
    def mean(values: list[float | None]) -> float | None:
        defined = [v for v in values if v is not None]
        return sum(defined) / len(defined) if defined else None

    fp_without = sum(p.without.lookalike_fp for p in pairs)
    fp_with = sum(p.with_negatives.lookalike_fp for p in pairs)
    return {
        "lookalike_fp_without": fp_without,
        "lookalike_fp_with": fp_with,
        "fp_reduction": (1 - fp_with / fp_without) if fp_without else None,
        "found_without": sum(p.without.found for p in pairs),
        "found_with": sum(p.with_negatives.found for p in pairs),
        "positives": sum(p.without.positives for p in pairs),
        "AP50_without": mean([p.without.ap50 for p in pairs]),
        "AP50_with": mean([p.with_negatives.ap50 for p in pairs]),
        "AP_without": mean([p.without.ap for p in pairs]),
        "AP_with": mean([p.with_negatives.ap for p in pairs]),
    }


def pairs_markdown(pairs: Sequence[PairResult], settings: Mapping[str, Any]) -> str:
    lines = [
        f"## Look-alike pairs ({settings.get('negative_kind')} negatives; counts at score >= {settings.get('fp_threshold')})",
        "",
        ("| positive | look-alike (negative) | cos | images | boxes A / B | FP on look-alike: without -> with "
        "| A found: without -> with | AP50 of A: without -> with |"),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in pairs:
        w, n = p.without, p.with_negatives
        lines.append(f"| {p.positive} | {p.negative} | {p.similarity:.3f} | {p.images} | {w.positives} / {w.lookalikes} "
                     f"| {w.lookalike_fp} -> {n.lookalike_fp} | {w.found} -> {n.found} | {percent(w.ap50)} -> {percent(n.ap50)} |")
    t = pair_totals(pairs)
    lines.append(f"| **all** | | | | {t['positives']} | {t['lookalike_fp_without']} -> {t['lookalike_fp_with']} "
                 f"| {t['found_without']} -> {t['found_with']} | {percent(t['AP50_without'])} -> {percent(t['AP50_with'])} |")
    if t["fp_reduction"] is not None:
        lines += ["", f"Look-alike false positives removed by negative prompts: {percent(t['fp_reduction'])} %."]
    return "\n".join(lines) + "\n"


__all__ = ["LookalikeStats", "PairResult", "count_hits", "evaluate_negatives", "most_similar_pairs", "pair_totals",
           "pairs_markdown"]
