"""Oracle proposals: a scene cache's true object boxes, jittered copies and random boxes.

A real :class:`~regionprompt.proposals.ProposalSource` that knows where the objects are. It
separates the teacher's recognition from proposal recall when measuring pseudo-label precision (an
upper bound on what any RPN can give), and it lets tests run the whole pseudo-labelling pipeline
without a trained RPN. Images are recognised by their pixels (the exact uint8 content of a cache
image), so the source works through the plain ``propose(images)`` protocol.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from regionprompt.errors import RegionPromptError
from regionprompt.proposals import Proposals
from regionprompt.world.scene_cache import SceneCache


def _pixel_key(image_hwc: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image_hwc).tobytes(), digest_size=16).digest()


class SceneBoxProposals:
    """Proposals for the images of a scene cache, built from its records.

    For each image: every object's true box (objectness 1), ``jittered_per_object`` copies of each
    with corners moved by up to ``jitter`` x the box size (objectness = IoU with the true box), and
    ``random_boxes`` uniformly placed boxes (objectness 0.05 x their best IoU with a true box). Boxes
    are xyxy pixels of the cache image, sorted by objectness; the randomness is a function of
    ``seed`` and the image index only.

    Args:
        cache: the scene cache whose images will be passed to :meth:`propose` (at the cache's size).
        num_images: only the first ``num_images`` images are recognised (hashing all is wasted work
            when only a few are labelled); ``None``: all.
    """

    def __init__(self, cache: SceneCache, *, jitter: float = 0.15, jittered_per_object: int = 2,
                 random_boxes: int = 20, seed: int = 0, num_images: int | None = None) -> None:
        self.cache = cache
        self.jitter, self.jittered_per_object, self.random_boxes, self.seed = jitter, jittered_per_object, random_boxes, seed
        count = len(cache) if num_images is None else min(num_images, len(cache))
        self._index = {_pixel_key(cache.image(i)): i for i in range(count)}

    @property
    def identity(self) -> str:
        """A string naming this source and its settings (for the pseudo-label store's identity)."""
        return f"oracle(jitter={self.jitter},jittered={self.jittered_per_object},random={self.random_boxes},seed={self.seed})"

    def proposals_for(self, index: int) -> Proposals:
        """The proposals of cache image ``index`` (all of them, best first)."""
        from torchvision import ops

        size = float(self.cache.spec.size)
        true = torch.tensor([o["box"] for o in self.cache.records[index]["objects"]], dtype=torch.float32).reshape(-1, 4)
        rng = np.random.default_rng([self.seed, index])
        wh = (true[:, 2:] - true[:, :2]).repeat(1, 2)
        jittered = []
        for _ in range(self.jittered_per_object):
            noise = torch.from_numpy(rng.uniform(-self.jitter, self.jitter, size=true.shape).astype(np.float32))
            jittered.append(true + noise * wh)
        jittered_boxes = torch.cat(jittered) if jittered else torch.zeros(0, 4)
        corners = torch.from_numpy(rng.uniform(0, size, size=(self.random_boxes, 2, 2)).astype(np.float32))
        random = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
        boxes = torch.cat([true, jittered_boxes, random]).clamp_(0, size)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)  # at least one pixel wide
        best_iou = ops.box_iou(boxes, true).max(dim=1).values if len(true) else torch.zeros(len(boxes))
        score = torch.cat([torch.ones(len(true)), best_iou[len(true) : len(true) + len(jittered_boxes)],
                           0.05 * best_iou[len(true) + len(jittered_boxes) :]])
        order = torch.argsort(score, descending=True, stable=True)
        return Proposals(boxes[order], score[order])

    def propose(self, images: torch.Tensor, *, max_proposals: int = 300) -> list[Proposals]:
        """``(B, 3, S, S)`` cache images in [0, 1] -> their proposals (at most ``max_proposals`` each)."""
        out = []
        for image in images:
            hwc = (image.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
            index = self._index.get(_pixel_key(hwc))
            if index is None:
                raise RegionPromptError(
                    f"oracle proposals: an image of shape {tuple(image.shape)} is not one of the first "
                    f"{len(self._index)} images of {self.cache.directory} at its {self.cache.spec.size} px size"
                )
            out.append(self.proposals_for(index).top(max_proposals))
        return out
