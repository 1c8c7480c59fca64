"""The typed values passed between T-Rex2's parts (encoder -> prompt encoder / decoder -> losses).

Coordinates inside the model are normalised to ``[0, 1]`` of the (resized) input image; boxes are
``cxcywh`` unless a name says otherwise. Pixels appear only at the public edges (``TRex2.detect`` and
the prompt-embedding methods).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncodedImages:
    """Output of the image encoder (backbone + deformable encoder).

    Attributes:
        memory: ``(B, S, D)`` encoder tokens of all levels, each level row-major, levels concatenated.
        spatial_shapes: ``(height, width)`` per level, fine to coarse (res3, res4, res5).
    """

    memory: torch.Tensor
    spatial_shapes: tuple[tuple[int, int], ...]

    @property
    def batch_size(self) -> int:
        return int(self.memory.shape[0])


@dataclass(frozen=True)
class VisualPromptBatch:
    """Visual prompts grouped by (image, category): each group becomes one prompt embedding.

    Attributes:
        coords: ``(G, P, 4)`` cxcywh boxes or ``(G, P, 2)`` ``(x, y)`` points, normalised; padded.
        mask: ``(G, P)`` bool, True for real prompts (each group has at least one).
        image_index: ``(G,)`` long, which image of the :class:`EncodedImages` batch each group was drawn on.
    """

    coords: torch.Tensor
    mask: torch.Tensor
    image_index: torch.Tensor

    def __post_init__(self) -> None:
        if self.coords.ndim != 3 or self.coords.shape[-1] not in (2, 4):
            raise ValueError(f"coords must be (G, P, 2) or (G, P, 4), got {tuple(self.coords.shape)}")
        if self.mask.shape != self.coords.shape[:2] or self.image_index.shape != self.coords.shape[:1]:
            raise ValueError(f"mask {tuple(self.mask.shape)} / image_index {tuple(self.image_index.shape)} "
                             f"do not match coords {tuple(self.coords.shape)}")
        if self.mask.shape[0] and not bool(self.mask.any(dim=1).all()):
            raise ValueError("every prompt group needs at least one prompt")

    @property
    def kind(self) -> str:
        """``"box"`` or ``"point"``."""
        return "box" if self.coords.shape[-1] == 4 else "point"

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def to(self, device: torch.device | str) -> VisualPromptBatch:
        """The same prompts on ``device``."""
        return VisualPromptBatch(self.coords.to(device), self.mask.to(device), self.image_index.to(device))


@dataclass(frozen=True)
class DetectionTarget:
    """Ground truth of one image for a training step.

    Attributes:
        boxes: ``(G, 4)`` cxcywh, normalised.
        labels: ``(G,)`` long: the prompt column (index into the step's prompt embeddings) of each object.
    """

    boxes: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> DetectionTarget:
        """The same target on ``device``."""
        return DetectionTarget(self.boxes.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class LayerPredictions:
    """One prediction stage (a decoder layer, the encoder's query selection, or denoising queries).

    Attributes:
        logits: ``(B, Q, K)`` classification logits of Q queries against K prompt embeddings.
        boxes: ``(B, Q, 4)`` cxcywh, normalised.
    """

    logits: torch.Tensor
    boxes: torch.Tensor

    def float(self) -> LayerPredictions:
        """The same predictions in float32 (after a bfloat16 autocast forward pass)."""
        return LayerPredictions(self.logits.float(), self.boxes.float())


@dataclass(frozen=True)
class DenoisingLayout:
    """Where the denoising queries of a training step sit and which ground truth each one reconstructs.

    The ``pad`` denoising queries come first in the decoder, before the matching queries. They form
    ``groups`` groups of ``2 * max_objects``: the first half positives (slightly noised boxes, must
    reconstruct their object), the second half negatives (more noise, must predict "no object").

    Attributes:
        groups: number of denoising groups.
        max_objects: most objects of any image in the batch.
        positive_index: per image, ``(groups * G_b,)`` long decoder-query indices of its positives, group-major.
        positive_target: per image, ``(groups * G_b,)`` long: the object (index into its target) each reconstructs.
    """

    groups: int
    max_objects: int
    positive_index: tuple[torch.Tensor, ...]
    positive_target: tuple[torch.Tensor, ...]

    @property
    def pad(self) -> int:
        return self.groups * 2 * self.max_objects


@dataclass(frozen=True)
class TRex2Output:
    """Everything a forward pass predicts.

    Attributes:
        layers: one :class:`LayerPredictions` per decoder layer (matching queries only); the last is the
            model's prediction, the others feed the auxiliary losses.
        encoder: predictions of the encoder tokens picked by query selection (their boxes are the
            decoder's initial references).
        denoising: per decoder layer, predictions of the denoising queries (training only).
        layout: where the denoising queries are (training only).
    """

    layers: tuple[LayerPredictions, ...]
    encoder: LayerPredictions
    denoising: tuple[LayerPredictions, ...] = ()
    layout: DenoisingLayout | None = None

    def float(self) -> TRex2Output:
        """Every prediction in float32 (after a bfloat16 autocast forward pass)."""
        return TRex2Output(tuple(p.float() for p in self.layers), self.encoder.float(),
                           tuple(p.float() for p in self.denoising), self.layout)

    @property
    def logits(self) -> torch.Tensor:
        """``(B, Q, K)`` logits of the final layer."""
        return self.layers[-1].logits

    @property
    def boxes(self) -> torch.Tensor:
        """``(B, Q, 4)`` cxcywh normalised boxes of the final layer."""
        return self.layers[-1].boxes
