"""Average recall of class-agnostic proposals, separately for base and novel objects.

Definitions (COCO's, as ``COCOeval`` computes AR with ``useCats=0``):

* at each IoU threshold t in 0.50, 0.55, ..., 0.95, the first ``k`` proposals of an image (by
  objectness) are matched greedily to its ground-truth boxes: each proposal, best first, takes the
  not-yet-matched box it overlaps most, if that IoU is >= t. Recall@t = matched boxes / all boxes;
* AR@k = the mean of recall@t over the ten thresholds.

Matching is over all objects of an image at once (proposals have no class); the recall is then
counted per group: ``base`` and ``novel`` (from the categories' ``split``), ``all``, and by COCO area
(``small`` < 32², ``medium``, ``large`` > 96² pixels). Crowd boxes are left out.

Box formats: ground truth COCO ``[x, y, w, h]`` absolute pixels; proposals ``(N, 4)`` xyxy pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from regionprompt.errors import EvaluationError
from regionprompt.eval.inputs import load_ground_truth
from regionprompt.eval.report import percent
from regionprompt.images import load_image, to_tensor
from regionprompt.logging_utils import progress
from regionprompt.proposals import ProposalSource

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
GROUPS: tuple[str, ...] = ("base", "novel", "all", "small", "medium", "large")
_SMALL, _LARGE = 32.0**2, 96.0**2


@dataclass(frozen=True)
class RecallResult:
    """Recall of one group of objects with the first ``limit`` proposals of each image.

    Attributes:
        group: ``base``, ``novel``, ``all``, ``small``, ``medium`` or ``large``.
        limit: proposals per image.
        num_gt: objects in the group (recall is undefined, ``nan``, when 0).
        average_recall: mean of ``recalls`` (COCO AR).
        recalls: recall at each of :data:`IOU_THRESHOLDS`.
    """

    group: str
    limit: int
    num_gt: int
    average_recall: float
    recalls: tuple[float, ...]

    @property
    def recall50(self) -> float:
        return self.recalls[0]

    @property
    def recall75(self) -> float:
        return self.recalls[IOU_THRESHOLDS.index(0.75)]


@dataclass(frozen=True)
class ProposalRecallReport:
    """Recall of every group at every proposal limit, plus what was evaluated."""

    num_images: int
    mean_proposals: float  # proposals per image actually returned (at the largest limit)
    limits: tuple[int, ...]
    results: tuple[RecallResult, ...]
    iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS

    def get(self, group: str, limit: int) -> RecallResult:
        for result in self.results:
            if result.group == group and result.limit == limit:
                return result
        raise KeyError(f"no result for group {group!r} at {limit} proposals")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; undefined recalls (groups without boxes) become ``None``."""
        data = asdict(self)
        data["results"] = [
            _no_nan({**asdict(r), "recall50": r.recall50, "recall75": r.recall75}) for r in self.results
        ]
        return data

    def to_markdown(self) -> str:
        lines = [
            f"Proposal recall on {self.num_images} images ({self.mean_proposals:.1f} proposals per image returned)",
            "",
            "| objects | boxes | " + " | ".join(f"AR@{k} | R50@{k}" for k in self.limits) + " |",
            "|---|---:|" + "---:|---:|" * len(self.limits),
        ]
        for group in GROUPS:
            cells = [self.get(group, k) for k in self.limits]
            values = " | ".join(f"{percent(c.average_recall)} | {percent(c.recall50)}" for c in cells)
            lines.append(f"| {group} | {cells[0].num_gt} | {values} |")
        return "\n".join(lines) + "\n"


def _no_nan(value: Any) -> Any:
    if isinstance(value, float):
        return None if np.isnan(value) else value
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    return value


def match_proposals(gt_boxes: torch.Tensor, proposals: torch.Tensor, limits: Sequence[int]) -> np.ndarray:
    """COCO greedy matching of one image's proposals (sorted best first) to its boxes.

    Args:
        gt_boxes: ``(G, 4)`` xyxy.
        proposals: ``(N, 4)`` xyxy, same pixels, in decreasing objectness.
        limits: proposal counts to report, each using the first ``k`` proposals.

    Returns:
        ``(len(limits), T, G)`` bool: box g is matched at IoU threshold t with the first ``limits[i]`` proposals.
    """
    thresholds = np.asarray(IOU_THRESHOLDS)[:, None]
    num_gt = int(gt_boxes.shape[0])
    out = np.zeros((len(limits), len(thresholds), num_gt), dtype=bool)
    if num_gt == 0 or proposals.shape[0] == 0:
        return out
    ious = box_iou(proposals[: max(limits)].double(), gt_boxes.double()).numpy()
    matched = np.zeros((len(thresholds), num_gt), dtype=bool)
    # Greedy matching is order-dependent but prefix-stable: the first k proposals match the same
    # boxes whatever follows, so one pass serves every limit.
    marks = sorted((k, i) for i, k in enumerate(limits))
    position = 0
    for d, row in enumerate(ious):
        while position < len(marks) and marks[position][0] == d:
            out[marks[position][1]] = matched
            position += 1
        candidates = np.where(~matched & (row[None, :] >= thresholds - 1e-12), row[None, :], -1.0)
        best = candidates.argmax(axis=1)
        hit = candidates[np.arange(len(thresholds)), best] >= 0
        matched[np.flatnonzero(hit), best[hit]] = True
    for k, i in marks[position:]:
        out[i] = matched
    return out


def recall_report(
    gt_boxes: Sequence[torch.Tensor],
    gt_groups: Sequence[Sequence[str]],
    proposals: Sequence[torch.Tensor],
    *,
    limits: Sequence[int] = (100, 300),
) -> ProposalRecallReport:
    """Recall of per-image proposals against per-image ground truth.

    Args:
        gt_boxes: one ``(G_i, 4)`` xyxy tensor per image.
        gt_groups: per image, the split of each box (``"base"`` / ``"novel"``, anything else counts only in ``all``).
        proposals: one ``(N_i, 4)`` xyxy tensor per image, best first.
        limits: proposal counts per image.
    """
    if not (len(gt_boxes) == len(gt_groups) == len(proposals)):
        raise EvaluationError(f"need as many ground-truth box sets, group lists and proposal sets "
                              f"(got {len(gt_boxes)}, {len(gt_groups)}, {len(proposals)})")
    limits = tuple(sorted({int(k) for k in limits}))
    if not limits or limits[0] < 1:
        raise EvaluationError(f"proposal limits must be positive integers, got {limits}")
    hits: list[np.ndarray] = []  # per image (L, T, G)
    tags: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    for boxes, groups, props in zip(gt_boxes, gt_groups, proposals):
        boxes = boxes.reshape(-1, 4).float()
        if len(groups) != boxes.shape[0]:
            raise EvaluationError(f"{boxes.shape[0]} boxes but {len(groups)} group labels in one image")
        hits.append(match_proposals(boxes, props.reshape(-1, 4).float(), limits))
        groups_arr = np.asarray(list(groups), dtype=object)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()
        tags["base"].append(groups_arr == "base")
        tags["novel"].append(groups_arr == "novel")
        tags["all"].append(np.ones(len(groups_arr), dtype=bool))
        tags["small"].append(area < _SMALL)
        tags["medium"].append((area >= _SMALL) & (area <= _LARGE))
        tags["large"].append(area > _LARGE)
    all_hits = np.concatenate(hits, axis=2) if hits else np.zeros((len(limits), len(IOU_THRESHOLDS), 0), bool)
    results = []
    for group in GROUPS:
        mask = np.concatenate(tags[group]) if tags[group] else np.zeros(0, dtype=bool)
        count = int(mask.sum())
        for li, k in enumerate(limits):
            if count:
                recalls = tuple(float(r) for r in all_hits[li][:, mask].mean(axis=1))
            else:
                recalls = (float("nan"),) * len(IOU_THRESHOLDS)
            results.append(RecallResult(group, k, count, float(np.mean(recalls)), recalls))
    mean_props = float(np.mean([min(len(p), limits[-1]) for p in proposals])) if proposals else 0.0
    return ProposalRecallReport(len(proposals), mean_props, limits, tuple(results))


def evaluate_proposals(
    source: ProposalSource,
    gt: str | Path | Mapping[str, Any],
    *,
    image_root: str | Path | None = None,
    limits: Sequence[int] = (100, 300),
    batch_size: int = 8,
) -> ProposalRecallReport:
    """Run ``source`` on every image of a COCO ground truth and measure its recall.

    Args:
        source: any :class:`~regionprompt.proposals.ProposalSource` (e.g. a trained ``ProposalNetwork``).
        gt: COCO instances JSON (path or dict) whose categories carry ``split`` (an EmojiWorld build).
        image_root: folder the images' ``file_name`` are relative to (default: the JSON's folder, or its
            ``images`` subfolder as EmojiWorld builds lay them out).
        limits: proposal counts per image to report.
        batch_size: images per ``propose`` call (images of one call must share a size).
    """
    truth = load_ground_truth(gt)
    images = truth.dataset["images"]
    image_root = _image_root(gt, image_root, images[0])
    boxes_of: dict[int, list[list[float]]] = {img["id"]: [] for img in truth.dataset["images"]}
    groups_of: dict[int, list[str]] = {img["id"]: [] for img in truth.dataset["images"]}
    for ann in truth.dataset["annotations"]:
        if ann.get("iscrowd"):
            continue
        x, y, w, h = ann["bbox"]
        boxes_of[ann["image_id"]].append([x, y, x + w, y + h])
        groups_of[ann["image_id"]].append(truth.splits.get(ann["category_id"], "unknown"))

    found: dict[int, torch.Tensor] = {}
    limit = max(limits)
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        stacked = torch.stack([t for _, t in batch])
        for (image_id, _), props in zip(batch, source.propose(stacked, max_proposals=limit)):
            found[image_id] = props.boxes
        batch.clear()

    for img in progress(images, desc="proposals", total=len(images), unit="image"):
        if "file_name" not in img:
            raise EvaluationError(f"image {img['id']} has no file_name; cannot run proposals on it")
        tensor = to_tensor(load_image(image_root / img["file_name"]).image)
        if batch and (tensor.shape != batch[0][1].shape or len(batch) >= batch_size):
            flush()
        batch.append((img["id"], tensor))
    if batch:
        flush()
    ids = [img["id"] for img in images]
    return recall_report(
        [torch.tensor(boxes_of[i], dtype=torch.float32).reshape(-1, 4) for i in ids],
        [groups_of[i] for i in ids],
        [found[i] for i in ids],
        limits=limits,
    )


def _image_root(gt: Any, image_root: str | Path | None, first: Mapping[str, Any]) -> Path:
    if image_root is not None:
        return Path(image_root)
    if not isinstance(gt, (str, Path)):
        raise EvaluationError("image_root is required when the ground truth is given as a dict")
    base = Path(gt).parent
    name = str(first.get("file_name", ""))
    for candidate in (base, base / "images"):
        if (candidate / name).is_file():
            return candidate
    raise EvaluationError(f"cannot find image {name!r} of {gt} in {base} or {base / 'images'}; pass the image folder")
