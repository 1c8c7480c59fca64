"""``TRex2``: the promptable detector, assembled from its parts.

Data flows one way::

    images (B, 3, H, W) in [0, 1] -> resize to card.image_size -> CLIP image tower res3..res5
        -> DeformableEncoder -> EncodedImages
    prompts: text  -> frozen text side (PromptEmbedder, cached) -> TextPromptProjection -> (K, D)
             boxes/points on images -> VisualPromptEncoder (+ mean across images) -> (K, D)
    EncodedImages + (K, D) prompts -> QuerySelection -> Decoder -> TRex2Output
        -> detect(): boxes (B, Q, 4) xyxy pixels of the input, scores (B, Q, K)

Prompt embeddings are L2-normalised ``D``-vectors; text, visual and mixed ones (averages) live in the
same space and can be stored and reused (e.g. as :class:`~regionprompt.concept.PromptConcept`).

Saved form (a directory): ``model.safetensors`` (detector, backbone and the frozen text side) +
``card.json`` (:class:`TRex2Card` with the weights hash).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from regionprompt.errors import CheckpointError, PromptError
from regionprompt.model_dir import load_model_dir, save_model_dir, tensors_hash
from regionprompt.trex2.card import LEVELS, TRex2Card
from regionprompt.trex2.decoder import Decoder, QuerySelection
from regionprompt.trex2.denoising import DenoisingQueries
from regionprompt.trex2.encoder import DeformableEncoder
from regionprompt.trex2.prompt_encoder import (
    TextPromptProjection,
    VisualPromptEncoder,
    mean_embedding,
)
from regionprompt.trex2.structures import EncodedImages, TRex2Output, VisualPromptBatch
from regionprompt.trex2.visual_prompts import make_prompt_batch
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder


@dataclass(frozen=True)
class QueryDetections:
    """Raw per-query predictions of :meth:`TRex2.detect` (before score thresholds / NMS).

    Attributes:
        boxes: ``(B, Q, 4)`` xyxy, absolute pixels of the images as given.
        scores: ``(B, Q, K)`` sigmoid probability of each query for each prompt.
    """

    boxes: torch.Tensor
    scores: torch.Tensor


def check_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float in [0, 1] (a single ``(3, H, W)`` image is batched); raises on anything else."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise PromptError(f"images must be a float tensor in [0, 1], got {type(images).__name__}"
                          f"{'' if not isinstance(images, torch.Tensor) else ' of ' + str(images.dtype)}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 1:
        raise PromptError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    return images


class TRex2(nn.Module):
    """T-Rex2 detector. Build with a card and (optionally) a pretrained CLIP model for backbone + text side."""

    def __init__(self, card: TRex2Card, clip: RegionPromptCLIP | None = None) -> None:
        super().__init__()
        if clip is not None and not clip.card.same_architecture(card.clip):
            raise CheckpointError(f"CLIP model {clip.card.name!r} does not match the card's {card.clip.name!r}")
        self.card = card
        self.clip = clip if clip is not None else RegionPromptCLIP(card.clip)
        visual = self.clip.visual
        channels = [visual.feature_channels[level] for level in LEVELS]  # type: ignore[union-attr]
        d, levels = card.dim, len(LEVELS)
        self.encoder = DeformableEncoder(channels, d, card.heads, card.points, card.encoder_layers, card.ffn_dim,
                                         card.dropout)
        self.text_projection = TextPromptProjection(card.clip.embed_dim, d)
        self.prompt_encoder = VisualPromptEncoder(d, card.heads, levels, card.points, card.prompt_layers,
                                                  card.ffn_dim, card.dropout)
        self.query_selection = QuerySelection(d)
        self.decoder = Decoder(d, card.heads, levels, card.points, card.decoder_layers, card.ffn_dim,
                               card.num_queries, card.dropout)
        # Frozen: the text side (it defines the text embedding space and its cache) and the parts of the
        # CLIP image tower a detector never runs (attention pool, temperature).
        for name, param in self.clip.named_parameters():
            if not name.startswith("visual.") or name.startswith("visual.attnpool."):
                param.requires_grad_(False)

    # ---- modes -------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> TRex2:
        """Train mode, except the backbone's BatchNorm statistics stay frozen (detection batches are
        a few images, too few for batch statistics -- DETR's FrozenBatchNorm) and the text side."""
        super().train(mode)
        for module in self.clip.visual.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        if hasattr(self.clip, "text"):
            self.clip.text.eval()
        return self

    def freeze_backbone_stages(self, stages: int) -> None:
        """Stop training the first ``stages`` stages of the image tower: 1 = the stem, 2 = stem and res2, ...
        (DETR freezes stem and res2: the early filters transfer as they are, and their backward pass at
        high resolution is the backbone's most expensive part)."""
        visual = self.clip.visual
        parts: list[list[nn.Module]] = [
            [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3],  # type: ignore[union-attr]
            [visual.layer1], [visual.layer2], [visual.layer3], [visual.layer4],  # type: ignore[union-attr]
        ]
        for modules in parts[:stages]:
            for module in modules:
                module.requires_grad_(False)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the CLIP image tower (usually given a smaller learning rate)."""
        return [p for p in self.clip.visual.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of everything but the backbone."""
        backbone = {id(p) for p in self.clip.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in backbone]

    # ---- images ------------------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, S, S)`` resized to ``card.image_size`` (aspect not kept)."""
        images = check_images(images)
        size = self.card.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def encode_images(self, images: torch.Tensor) -> EncodedImages:
        """``(B, 3, H, W)`` in [0, 1] -> encoder tokens of res3..res5 (see :class:`EncodedImages`).

        Under a bfloat16 autocast (:meth:`autocast`) the backbone runs channels-last, the layout oneDNN's
        bfloat16 convolutions are fastest in; the float32 path keeps the default layout (same numbers as
        before the option existed)."""
        visual = self.clip.visual
        x = visual.normalize(self.preprocess(images))
        if torch.is_autocast_enabled(x.device.type):
            x = x.contiguous(memory_format=torch.channels_last)
        maps = visual.features(x, stop_at="res5")  # type: ignore[call-arg]
        return self.encoder([maps[level] for level in LEVELS])

    def autocast(self, bfloat16: bool) -> contextlib.AbstractContextManager[None]:
        """bfloat16 autocast on the model's device for inference (a no-op context when ``bfloat16`` is False).

        Matrix products and convolutions run in bfloat16 (CPUs with AVX512-BF16 / AMX, GPUs); sampling
        positions, softmaxes and normalisations stay float32. Outputs are bfloat16-rounded: cast them with
        :meth:`TRex2Output.float`. Scores move by about 1e-2 (tested on the shipped model), so float32 stays
        the default of every detector."""
        device = next(self.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=bfloat16)

    # ---- prompts -----------------------------------------------------------------------------------

    def text_prompt_embeddings(self, text_features: torch.Tensor) -> torch.Tensor:
        """``(K, E)`` embeddings of the frozen text side -> ``(K, D)`` L2-normalised prompt embeddings."""
        return self.text_projection(text_features.to(self.text_projection.proj.weight.dtype))

    def text_features(self, texts: Sequence[str], *, cache: EmbeddingCache | None = None) -> torch.Tensor:
        """``(K, E)`` template-ensembled embeddings of the frozen text side (cached when ``cache`` is given)."""
        embedder = PromptEmbedder(self.clip.text_encoder(), templates=self.card.templates, cache=cache)
        return embedder.embed(list(texts))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], *, cache: EmbeddingCache | None = None) -> torch.Tensor:
        """Phrases -> ``(K, D)`` L2-normalised text prompt embeddings."""
        return self.text_prompt_embeddings(self.text_features(texts, cache=cache))

    def visual_prompt_embeddings(self, encoded: EncodedImages, prompts: VisualPromptBatch) -> torch.Tensor:
        """One ``(D,)`` embedding per prompt group -> ``(G, D)``, L2-normalised (differentiable)."""
        return self.prompt_encoder(encoded, prompts)

    @torch.no_grad()
    def embed_visual_prompts(self, images: torch.Tensor | Sequence[torch.Tensor],
                             prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Visual prompts of ONE category drawn on one or several images -> its ``(D,)`` embedding.

        Args:
            images: ``(N, 3, H, W)`` in [0, 1], or N ``(3, H_i, W_i)`` images of different sizes.
            prompts: N tensors, ``(M_i, 4)`` xyxy boxes or ``(M_i, 2)`` ``(x, y)`` points in pixels of image
                i (all boxes or all points; ``M_i = 0`` skips an image). Several prompts on one image give
                one embedding; several images (generic workflow) give the mean of theirs.
        Raises:
            PromptError: no prompt, a box of zero area, a prompt outside its image, bad shapes.
        """
        if isinstance(images, torch.Tensor):
            items = list(check_images(images).split(1))
        else:
            items = [check_images(img) for img in images]
        if len(items) != len(prompts):
            raise PromptError(f"{len(prompts)} prompt sets for {len(items)} images")
        used = [(i, torch.as_tensor(p, dtype=torch.float32)) for i, p in enumerate(prompts)
                if torch.as_tensor(p).numel()]
        if not used:
            raise PromptError("no visual prompts given")
        image_wh = [(int(img.shape[-1]), int(img.shape[-2])) for img in items]
        batch = make_prompt_batch([(k, p) for k, (_, p) in enumerate(used)], [image_wh[i] for i, _ in used])
        resized = torch.cat([self.preprocess(items[i]) for i, _ in used])
        was_training = self.training
        self.eval()
        try:
            per_image = self.visual_prompt_embeddings(self.encode_images(resized), batch)
        finally:
            self.train(was_training)
        return mean_embedding(per_image)

    # ---- detection ---------------------------------------------------------------------------------

    def forward(self, encoded: EncodedImages, prompts: torch.Tensor,
                denoising: DenoisingQueries | None = None, *, select_with: int | None = None) -> TRex2Output:
        """Encoded images + ``(K, D)`` prompt embeddings -> predictions of every stage (for training).

        The same prompts are scored on every image of the batch. ``select_with``: only the first that many
        prompts pick the queries (negative prompts are scored but must not draw queries to themselves);
        the encoder predictions then cover those columns only.
        """
        selecting = prompts if select_with is None else prompts[:select_with]
        selected, reference = self.query_selection(encoded, selecting, self.card.num_queries)
        matching, noised = self.decoder(encoded, prompts, reference, denoising)
        layout = denoising.layout if denoising is not None else None
        return TRex2Output(tuple(matching), selected, tuple(noised), layout)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, prompt_embeddings: torch.Tensor, *,
               bfloat16: bool = False) -> QueryDetections:
        """``(B, 3, H, W)`` in [0, 1] + ``(K, D)`` prompt embeddings -> per-query boxes (xyxy pixels of the
        input) and ``(B, Q, K)`` float32 scores. Runs in eval mode; ``bfloat16``: under :meth:`autocast`."""
        images = check_images(images)
        prompt_embeddings = torch.as_tensor(prompt_embeddings, dtype=torch.float32)
        if prompt_embeddings.ndim != 2 or prompt_embeddings.shape[0] == 0 or prompt_embeddings.shape[1] != self.card.dim:
            raise PromptError(f"prompt embeddings must be (K >= 1, {self.card.dim}), got {tuple(prompt_embeddings.shape)}")
        was_training = self.training
        self.eval()
        try:
            with self.autocast(bfloat16):
                output = self(self.encode_images(images), prompt_embeddings)
            output = output.float()
        finally:
            self.train(was_training)
        h, w = images.shape[-2:]
        boxes = box_convert(output.boxes, "cxcywh", "xyxy") * output.boxes.new_tensor([w, h, w, h])
        return QueryDetections(boxes=boxes, scores=output.logits.sigmoid())

    # ---- persistence -------------------------------------------------------------------------------

    def weights_hash(self) -> str:
        return tensors_hash(self.state_dict().items())

    def save(self, directory: str | Path) -> TRex2Card:
        """Write ``model.safetensors`` + ``card.json`` (with the weights hash) atomically; returns the card."""
        self.card = save_model_dir(directory, self.state_dict(), self.card)
        return self.card

    @classmethod
    def load(cls, directory: str | Path) -> TRex2:
        """Load a folder written by :meth:`save` (weights verified against the card's hash); eval mode.

        Raises:
            CheckpointError: the folder, its card or its weights are missing, unreadable, do not match the
                card's hash, or do not fit the card's architecture.
        """
        return load_model_dir(
            directory, TRex2Card, lambda card: cls(card, RegionPromptCLIP.uninitialized(card.clip)), kind="T-Rex2"
        )


def build_trex2(card: TRex2Card, clip: RegionPromptCLIP | None = None, *, seed: int | None = None) -> TRex2:
    """A detector with randomly initialised heads (and backbone, unless ``clip`` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    return TRex2(card, clip)
