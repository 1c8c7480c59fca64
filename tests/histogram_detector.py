"""A small, real, training-free detector with the ``Detector`` API, for server and web UI tests.

It detects by colour: a region's embedding is its square-rooted joint colour histogram (4 levels per
channel, 64 bins), L2-normalised, so the cosine of two regions is their Bhattacharyya coefficient.
Prompt embeddings: a box -> its region; a point -> a square around it; a text -> a colour word's
bin ("red", "yellow", ...) or, for other phrases, a unit vector drawn from the phrase's hash
(deterministic but meaningless). Candidates are sliding windows of every box prompt's size (eighth-size stride)
and a few default squares (quarter-size stride); score = a sharpened cosine; a window closer to a
negative than to its category is dropped; per-class NMS; top-k. Exact and fast on EmojiWorld
scenes: a box drawn on an emoji finds that emoji again with a score near 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms

from regionprompt.api import build_prompts
from regionprompt.concept import PromptConcept
from regionprompt.errors import PromptError
from regionprompt.images import load_image
from regionprompt.prompts import (
    BoxPrompt,
    Prompt,
    PromptCategory,
    TextPrompt,
    group_prompts,
    validate_visual_prompts,
)
from regionprompt.results import Detections

LEVELS = 4
DIM = LEVELS**3
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (240, 220, 40),
           "white": (255, 255, 255), "black": (0, 0, 0), "orange": (250, 140, 20), "brown": (130, 80, 30)}


def _bin(rgb: tuple[int, int, int]) -> int:
    r, g, b = (v * LEVELS // 256 for v in rgb)
    return r * LEVELS * LEVELS + g * LEVELS + b


class HistogramDetector:
    """Colour-histogram detection behind the ``Detector`` methods the server uses."""

    def __init__(self, *, window_sizes: Sequence[int] = (24, 40, 64, 96), point_size: int = 32,
                 max_detections: int = 20, nms_iou: float = 0.3) -> None:
        self.window_sizes = tuple(window_sizes)
        self.point_size = point_size
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        self.model_hash = hashlib.sha256(f"histogram-detector/{LEVELS}".encode()).hexdigest()
        self.calls = 0

    def __repr__(self) -> str:
        return f"HistogramDetector(model_hash={self.model_hash[:12]!r})"

    # -- embeddings ----------------------------------------------------------------------------

    @staticmethod
    def _bins(image: Image.Image) -> torch.Tensor:
        """``(H, W)`` int64 joint colour bin of every pixel."""
        q = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).long() * LEVELS // 256
        return q[..., 0] * LEVELS * LEVELS + q[..., 1] * LEVELS + q[..., 2]

    @staticmethod
    def _integral(bins: torch.Tensor) -> torch.Tensor:
        """``(DIM, H + 1, W + 1)`` summed-area tables of the one-hot colour bins."""
        h, w = bins.shape
        onehot = torch.zeros(DIM, h * w).scatter_(0, bins.reshape(1, -1), 1.0).reshape(DIM, h, w)
        table = torch.zeros(DIM, h + 1, w + 1)
        table[:, 1:, 1:] = onehot.cumsum(2).cumsum(1)
        return table

    @staticmethod
    def _regions(table: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``(K, 4)`` xyxy pixel boxes -> ``(K, DIM)`` unit Hellinger embeddings."""
        h, w = table.shape[1] - 1, table.shape[2] - 1
        b = boxes.round().long()
        x1, x2 = b[:, 0].clamp(0, w - 1), b[:, 2].clamp(0, w)
        y1, y2 = b[:, 1].clamp(0, h - 1), b[:, 3].clamp(0, h)
        x2, y2 = torch.maximum(x2, x1 + 1), torch.maximum(y2, y1 + 1)
        sums = table[:, y2, x2] - table[:, y1, x2] - table[:, y2, x1] + table[:, y1, x1]
        return torch.nn.functional.normalize(sums.T.clamp(min=0).sqrt(), dim=1)

    @staticmethod
    def _region(bins: torch.Tensor, box: tuple[float, ...]) -> torch.Tensor:
        """One box's ``(DIM,)`` embedding, straight from the pixels (no table needed)."""
        h, w = bins.shape
        x1, y1 = min(max(round(box[0]), 0), w - 1), min(max(round(box[1]), 0), h - 1)
        x2, y2 = max(min(round(box[2]), w), x1 + 1), max(min(round(box[3]), h), y1 + 1)
        counts = torch.bincount(bins[y1:y2, x1:x2].reshape(-1), minlength=DIM).float()
        return torch.nn.functional.normalize(counts.sqrt(), dim=0)

    def _point_box(self, point: tuple[float, float]) -> tuple[float, float, float, float]:
        half = self.point_size / 2
        return (point[0] - half, point[1] - half, point[0] + half, point[1] + half)

    def _embed(self, prompt: Prompt, searched: Image.Image | None) -> torch.Tensor:
        if isinstance(prompt, TextPrompt):
            colour = COLOURS.get(prompt.text.lower())
            if colour is not None:
                vector = torch.zeros(DIM)
                vector[_bin(colour)] = 1.0
                return vector
            seed = int.from_bytes(hashlib.sha256(prompt.text.encode()).digest()[:8], "little")
            return torch.nn.functional.normalize(torch.rand(DIM, generator=torch.Generator().manual_seed(seed)), dim=0)
        image = prompt.image if prompt.image is not None else searched
        if image is None:
            raise PromptError("a box or point prompt needs the image it was drawn on")
        box = prompt.box if isinstance(prompt, BoxPrompt) else self._point_box(prompt.point)
        return self._region(self._bins(load_image(image).image), box)

    def _category(self, category: PromptCategory, searched: Image.Image | None) -> tuple[torch.Tensor, torch.Tensor]:
        positives = [self._embed(p, searched) for p in (*category.texts, *category.visuals)]
        embedding = torch.nn.functional.normalize(torch.stack(positives).mean(0), dim=0)
        negatives = torch.stack([self._embed(p, searched) for p in category.negatives]) if category.negatives else torch.zeros(0, DIM)
        return embedding, negatives

    # -- the Detector API ------------------------------------------------------------------------

    def make_concept(self, name: str, *, text: Any = None, boxes: Any = None, points: Any = None,
                     prompt_images: Any = None, negatives: Any = None) -> PromptConcept:
        prompts = build_prompts(text, boxes=boxes, points=points, prompt_images=prompt_images, negatives=negatives,
                                visual_label=name)
        positives = [p for p in prompts if not p.negative]
        if not positives:
            raise PromptError(f"concept {name!r}: give at least one phrase, box or point")
        category = PromptCategory(name, tuple(p for p in positives if isinstance(p, TextPrompt)),
                                  tuple(p for p in positives if not isinstance(p, TextPrompt)),
                                  tuple(p for p in prompts if p.negative))
        embedding, negs = self._category(category, None)
        sources = []
        for p in prompts:
            if isinstance(p, TextPrompt):
                sources.append({"kind": "text", "text": p.text, "negative": p.negative})
            else:
                digest = hashlib.sha256(load_image(p.image).image.tobytes()).hexdigest()
                key, value = ("box", list(p.box)) if isinstance(p, BoxPrompt) else ("point", list(p.point))
                sources.append({"kind": key, key: value, "image_sha256": digest, "negative": p.negative})
        return PromptConcept(name, embedding, self.model_hash, negs, tuple(sources))

    def predict(self, images: Any, text: Any = None, *, boxes: Any = None, points: Any = None,
                prompt_images: Any = None, negatives: Any = None, concepts: Sequence[PromptConcept] | None = None,
                threshold: float = 0.5, visual_label: str = "object",
                one_label_per_box: bool = False) -> list[Detections]:
        self.calls += 1
        if not 0 <= threshold <= 1:
            raise PromptError(f"threshold must be in [0, 1], got {threshold}")
        prompts = build_prompts(text, boxes=boxes, points=points, prompt_images=prompt_images, negatives=negatives,
                                visual_label=visual_label)
        concepts = list(concepts or [])
        for concept in concepts:
            if not isinstance(concept, PromptConcept):
                raise PromptError("this detector takes PromptConcept objects, not names")
            concept.check_model(self.model_hash)
        if not any(not p.negative for p in prompts) and not concepts:
            raise PromptError("the prompt list is empty: pass at least one text phrase, box, point or concept")
        categories = group_prompts(prompts) if any(not p.negative for p in prompts) else []
        sources = images if isinstance(images, (list, tuple)) else [images]
        found = [self._detect_one(load_image(src), prompts, categories, concepts, threshold) for src in sources]
        return [d.nms(0.5, per_class=False) for d in found] if one_label_per_box else found

    def _detect_one(self, loaded: Any, prompts: list[Prompt], categories: list[PromptCategory],
                    concepts: list[PromptConcept], threshold: float) -> Detections:
        image = loaded.image
        validate_visual_prompts(prompts, loaded.wh)
        names = [c.name for c in categories] + [c.name for c in concepts]
        classes = [self._category(c, image) for c in categories] + [(c.embedding, c.negatives) for c in concepts]
        # (width, height, stride divisor): exemplar-sized windows on a finer grid, so one lands on the exemplar.
        sizes = {(s, s, 4) for s in self.window_sizes}
        exemplars = [p.box for p in prompts if isinstance(p, BoxPrompt)]
        exemplars += [s["box"] for c in concepts for s in c.sources if s.get("kind") == "box" and not s.get("negative")]
        for box in exemplars:
            sizes.add((round(box[2] - box[0]), round(box[3] - box[1]), 8))
        width, height = loaded.wh
        windows = []
        for w, h, divisor in sorted(sizes):
            w, h = min(w, width), min(h, height)
            xs = torch.arange(0, width - w + 1, max(1, w // divisor)).float()
            ys = torch.arange(0, height - h + 1, max(1, h // divisor)).float()
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            windows.append(torch.stack([gx, gy, gx + w, gy + h], dim=-1).reshape(-1, 4))
        boxes = torch.cat(windows)
        features = self._regions(self._integral(self._bins(image)), boxes)
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label, (embedding, negs) in enumerate(classes):
            similarity = features @ embedding
            keep = torch.ones_like(similarity, dtype=torch.bool)
            if negs.shape[0]:
                keep &= (features @ negs.T).max(dim=1).values <= similarity
            # Sharpen: unrelated regions still share background colours (cosine ~0.5-0.8).
            score = similarity.clamp(0, 1) ** 8
            keep &= score >= threshold
            kept_boxes.append(boxes[keep])
            kept_scores.append(score[keep])
            kept_labels.append(torch.full((int(keep.sum()),), label, dtype=torch.int64))
        all_boxes, scores, labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        order = batched_nms(all_boxes, scores, labels, self.nms_iou)[: self.max_detections]
        described = tuple(categories) + tuple(PromptCategory(c.name) for c in concepts)
        return Detections(all_boxes[order], scores[order], labels[order], tuple(names), loaded.wh,
                          prompts=described, image_name=loaded.name)


class GatedDetector(HistogramDetector):
    """Blocks inside ``predict`` until ``gate`` is set (deterministic queue-full and timeout tests)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def predict(self, *args: Any, **kwargs: Any) -> list[Detections]:
        self.entered.release()
        if not self.gate.wait(timeout=60):
            raise RuntimeError("test gate never opened")
        return super().predict(*args, **kwargs)
