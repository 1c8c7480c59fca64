"""Pseudo-label precision and recall against EmojiWorld's true objects (a check the paper could not make).

A pseudo label is *correct* when its box overlaps a true object of the same concept with IoU >= 0.5.
Several labels on one object may all be correct (each is a valid region-text pair for training). A
true object is *recalled* when at least one correct label lies on it. Pool names map to EmojiWorld
concepts by name or synonym; a pool name that names no concept can never be correct.

Precision is split by the split (base / novel) of the *labelled* concept, recall by the split of the
*true* object's concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from regionprompt.errors import RegionPromptError
from regionprompt.regionclip.label_store import PseudoLabels
from regionprompt.world.concepts import ConceptSet, load_concepts
from regionprompt.world.scene_cache import SceneCache

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def pool_concept_ids(pool_names: Sequence[str], concepts: ConceptSet | None = None) -> np.ndarray:
    """``(C,)`` int64: the EmojiWorld concept id each pool name resolves to (name or synonym), -1 if none."""
    concepts = concepts or load_concepts()
    ids = []
    for name in pool_names:
        try:
            ids.append(concepts.by_name(name).id)
        except RegionPromptError:
            ids.append(-1)
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True)
class MatchResult:
    """Per-label and per-object outcome of :func:`match_labels` for one image."""

    correct: torch.Tensor  # (R,) bool: IoU >= iou with a true object of the same concept
    same_group: torch.Tensor  # (R,) bool: ... of the same near-duplicate group
    localised: torch.Tensor  # (R,) bool: IoU >= iou with any true object
    recalled: torch.Tensor  # (T,) bool: the object carries at least one correct label


def match_labels(boxes: torch.Tensor, concept_ids: torch.Tensor, true_boxes: torch.Tensor, true_ids: torch.Tensor,
                 *, iou: float = 0.5, group_of: dict[int, str] | None = None) -> MatchResult:
    """Match one image's pseudo labels to its true objects.

    Args:
        boxes: ``(R, 4)`` xyxy pixels; ``concept_ids``: ``(R,)`` EmojiWorld ids (-1: unmapped).
        true_boxes: ``(T, 4)`` xyxy pixels of the same image; ``true_ids``: ``(T,)``.
        group_of: concept id -> near-duplicate group (ids without a group form their own).
    """
    r, t = len(boxes), len(true_boxes)
    if r == 0 or t == 0:
        none = torch.zeros(r, dtype=torch.bool)
        return MatchResult(none, none.clone(), none.clone(), torch.zeros(t, dtype=torch.bool))
    overlap = box_iou(boxes.float(), true_boxes.float()) >= iou  # (R, T)
    same = concept_ids[:, None] == true_ids[None, :]
    hits = overlap & same & (concept_ids[:, None] >= 0)
    group_of = group_of or {}
    label_groups = [group_of.get(c, f"#{c}") for c in concept_ids.tolist()]
    true_groups = [group_of.get(c, f"#{c}") for c in true_ids.tolist()]
    same_group = torch.tensor([[a == b for b in true_groups] for a in label_groups], dtype=torch.bool)
    group_hits = overlap & same_group & (concept_ids[:, None] >= 0)
    return MatchResult(hits.any(dim=1), group_hits.any(dim=1), overlap.any(dim=1), hits.any(dim=0))


@dataclass(frozen=True)
class SplitScore:
    """Counts of one group of labels / objects."""

    labels: int = 0
    correct: int = 0
    true_objects: int = 0
    recalled: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.labels if self.labels else float("nan")

    @property
    def recall(self) -> float:
        return self.recalled / self.true_objects if self.true_objects else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": round(self.precision, 4), "recall": round(self.recall, 4)}


@dataclass(frozen=True)
class PrecisionReport:
    """Pseudo-label quality over the labelled images.

    Attributes:
        images: images evaluated.
        overall: all labels and all true objects.
        by_split: ``base`` / ``novel`` (labels by their concept's split, objects by theirs).
        unmapped: labels whose pool name is no EmojiWorld concept (counted as wrong in ``overall``).
        same_group: labels on a true object of the same near-duplicate group ("dog" vs "dog face").
        localised: labels with IoU >= 0.5 to some true object, whatever the concept (box quality).
        by_threshold: for each probability threshold t, (labels with best probability >= t, precision).
    """

    images: int
    overall: SplitScore
    by_split: dict[str, SplitScore]
    unmapped: int
    same_group: int
    localised: int
    by_threshold: dict[float, tuple[int, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "overall": self.overall.to_dict(),
            "by_split": {k: v.to_dict() for k, v in self.by_split.items()},
            "unmapped": self.unmapped,
            "same_group": self.same_group,
            "localised": self.localised,
            "by_threshold": {str(t): {"labels": n, "precision": round(p, 4)} for t, (n, p) in self.by_threshold.items()},
        }

    def markdown(self) -> str:
        o = self.overall
        lines = ["| group | labels | precision | true objects | recall |", "|---|---:|---:|---:|---:|",
                 f"| all | {o.labels} | {o.precision:.3f} | {o.true_objects} | {o.recall:.3f} |"]
        for name, s in self.by_split.items():
            lines.append(f"| {name} | {s.labels} | {s.precision:.3f} | {s.true_objects} | {s.recall:.3f} |")

        def share(n: int) -> float:
            return n / o.labels if o.labels else float("nan")

        summary = (f"{self.images} images; labels on an object of the same near-duplicate group: {share(self.same_group):.3f}; "
                   f"on any object (IoU >= 0.5): {share(self.localised):.3f}; pool names that are no concept: {self.unmapped} labels")
        lines += ["", summary, "",
                  "| best probability >= | labels | precision |", "|---:|---:|---:|"]
        lines += [f"| {t} | {n} | {p:.3f} |" for t, (n, p) in self.by_threshold.items()]
        return "\n".join(lines) + "\n"


def precision_report(labels: PseudoLabels, cache: SceneCache, *, iou: float = 0.5,
                     thresholds: Sequence[float] = THRESHOLDS, concepts: ConceptSet | None = None) -> PrecisionReport:
    """Score the pseudo labels of ``labels`` against the true objects of ``cache`` (same images, same pixels)."""
    concepts = concepts or load_concepts()
    if len(labels) > len(cache):
        raise RegionPromptError(f"{labels.directory} covers {len(labels)} images but the scene cache holds {len(cache)}")
    to_id = torch.from_numpy(pool_concept_ids(labels.pool_names, concepts))
    split_of = {c.id: c.split for c in concepts}
    group_of = {c.id: c.group for c in concepts if c.group}
    counts = {s: {"labels": 0, "correct": 0, "true_objects": 0, "recalled": 0} for s in ("all", "base", "novel")}
    unmapped = same_group = localised = 0
    best_prob, correct_all = [], []
    for index in range(len(labels)):
        region = labels.regions(index)
        ids = to_id[region.concept] if len(region.concept) else torch.zeros(0, dtype=torch.int64)
        objects = cache.records[index]["objects"]
        true_boxes = torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4)
        true_ids = torch.tensor([o["concept_id"] for o in objects], dtype=torch.int64)
        match = match_labels(region.boxes, ids, true_boxes, true_ids, iou=iou, group_of=group_of)
        unmapped += int((ids < 0).sum())
        same_group += int(match.same_group.sum())
        localised += int(match.localised.sum())
        best_prob.append(region.topk_prob[:, 0].float())
        correct_all.append(match.correct)
        label_splits = [split_of.get(int(c), "") for c in ids.tolist()]
        true_splits = [split_of[int(c)] for c in true_ids.tolist()]
        for split in ("all", "base", "novel"):
            lab = torch.tensor([split == "all" or s == split for s in label_splits], dtype=torch.bool)
            obj = torch.tensor([split == "all" or s == split for s in true_splits], dtype=torch.bool)
            c = counts[split]
            c["labels"] += int(lab.sum())
            c["correct"] += int((match.correct & lab).sum()) if len(lab) else 0
            c["true_objects"] += int(obj.sum())
            c["recalled"] += int((match.recalled & obj).sum()) if len(obj) else 0
    probs = torch.cat(best_prob) if best_prob else torch.zeros(0)
    correct = torch.cat(correct_all) if correct_all else torch.zeros(0, dtype=torch.bool)
    by_threshold = {}
    for t in thresholds:
        above = probs >= t
        n = int(above.sum())
        by_threshold[float(t)] = (n, float(correct[above].float().mean()) if n else float("nan"))
    return PrecisionReport(
        images=len(labels),
        overall=SplitScore(**counts["all"]),
        by_split={s: SplitScore(**counts[s]) for s in ("base", "novel")},
        unmapped=unmapped,
        same_group=same_group,
        localised=localised,
        by_threshold=by_threshold,
    )
