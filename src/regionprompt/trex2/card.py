"""``TRex2Card``: the architecture of a T-Rex2 detector, saved as ``card.json`` next to its weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from regionprompt.card_json import card_to_dict, card_to_json, parse_card_json
from regionprompt.errors import CheckpointError
from regionprompt.vl.cards import ModelCard

#: Backbone maps the encoder reads, fine to coarse (strides 8, 16, 32).
LEVELS = ("res3", "res4", "res5")


#: Largest value of each size field: far above any trained T-Rex2, far below gigabytes of modules.
_BOUNDS = {"image_size": 4096, "dim": 8192, "heads": 256, "points": 64, "encoder_layers": 64, "decoder_layers": 64,
           "prompt_layers": 64, "ffn_dim": 65536, "num_queries": 10000}


@dataclass(frozen=True)
class TRex2Card:
    """Everything needed to rebuild a :class:`~regionprompt.trex2.model.TRex2`, plus provenance.

    The CLIP card describes the image tower (the backbone) and the frozen text side that embeds text
    prompts; both are saved inside the detector's weights, so a detector folder is self-contained.
    """

    clip: ModelCard  # backbone + text side
    name: str = "trex2"
    image_size: int = 320  # square input side in pixels (multiple of 32); images are resized to it
    dim: int = 128  # transformer width and prompt-embedding dimension
    heads: int = 4  # attention heads everywhere
    points: int = 4  # deformable sampling points per head and level
    encoder_layers: int = 2  # deformable encoder layers over res3-res5
    decoder_layers: int = 3  # DINO decoder layers (iterative box refinement)
    prompt_layers: int = 3  # visual prompt encoder layers
    ffn_dim: int = 256  # hidden width of every feed-forward block
    num_queries: int = 60  # detection queries (top-k encoder tokens)
    dropout: float = 0.0
    templates: str = "emoji"  # prompt template set for text prompts (regionprompt.vl.templates)
    weights_hash: str | None = None  # sha256 of the weights saved next to this card (set by save())
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        # Upper bounds too: a card.json is input, and the model is built from it before any weight is read.
        for name, high in _BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                problems.append(f"{name} must be an integer in [1, {high}], got {value!r:.40}")
        if problems:
            raise CheckpointError("invalid T-Rex2 card: " + "; ".join(problems))
        if self.clip.vision.kind != "resnet":
            problems.append(f"the backbone must be a ResNet CLIP card (multi-scale maps), got {self.clip.name!r}")
        if self.image_size % 32 or self.image_size < 32:
            problems.append(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.dim % self.heads or self.dim % 4:
            problems.append(f"dim {self.dim} must be a multiple of 4 and of heads {self.heads}")
        if problems:
            raise CheckpointError("invalid T-Rex2 card: " + "; ".join(problems))

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS

    def tokens(self, image_size: int | None = None) -> int:
        """Encoder tokens per image: ``sum (size / stride)^2`` over res3-res5."""
        size = image_size or self.image_size
        return sum((size // s) ** 2 for s in (8, 16, 32))

    def with_updates(self, **changes: Any) -> TRex2Card:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = card_to_dict(self)
        data["clip"] = self.clip.to_dict()
        return data

    def to_json(self) -> str:
        return card_to_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> TRex2Card:
        try:
            values = dict(data)
            values["clip"] = ModelCard.from_dict(values["clip"], source=f"{source} (clip)")
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: not a valid T-Rex2 card ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> TRex2Card:
        return cls.from_dict(parse_card_json(text, source=source, what="a T-Rex2 card"), source=source)
