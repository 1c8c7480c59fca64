"""Model cards: the small JSON files that describe a CLIP architecture and travel with its weights.

A card fully determines the module tree (and so the state-dict keys and shapes) of a
:class:`~regionprompt.vl.clip_model.RegionPromptCLIP`. Shipped cards live in ``vl/cards/*.json``:
``RN50`` and ``ViT-B-32`` (the standard OpenAI/open_clip architectures, for real checkpoints) and the
small CPU cards we train on EmojiWorld (``RN-tiny``, ``ViT-tiny``). A saved model directory holds a
``card.json`` next to ``model.safetensors``; the card there also records the weights hash and free-form
``training`` / ``metrics`` dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from regionprompt.card_json import card_to_dict, card_to_json, parse_card_json
from regionprompt.errors import RegionPromptError

#: CLIP's preprocessing statistics (OpenAI, also used by open_clip for these architectures).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEXT_KINDS = ("clip", "minilm")
#: Largest width, depth, vocabulary and input a card may describe: far above every released CLIP (ViT-bigG:
#: width 1664, 48 layers), far below what would need gigabytes before a single weight is read. Cards come
#: from files (``card.json``) or are inferred from tensor shapes, so both are checked here.
MAX_WIDTH = 16384
MAX_LAYERS = 256
MAX_VOCAB = 2_000_000
MAX_CONTEXT = 4096
MAX_IMAGE_SIZE = 4096


def _check_range(value: object, low: int, high: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ModelCardError(f"{what} must be an integer in [{low}, {high}], got {value!r:.40}")


class ModelCardError(RegionPromptError, ValueError):
    """A model card is missing, not valid JSON, or describes an impossible architecture."""


@dataclass(frozen=True)
class VisionCard:
    """Image tower.

    ``layers`` is a 4-tuple of bottleneck counts for the ModifiedResNet ("RN") family, or an int
    (number of transformer blocks) for a ViT, which then also needs ``patch_size``.
    """

    image_size: int  # square input side in pixels the tower was built for (RN: multiple of 32)
    width: int  # RN: stem width (res5 has 32 * width channels); ViT: transformer width
    layers: tuple[int, int, int, int] | int
    patch_size: int | None = None  # ViT only
    head_width: int = 64  # channels per attention head (attention pool for RN, every block for ViT)
    mlp_ratio: float = 4.0  # ViT only

    @property
    def kind(self) -> str:
        """``"resnet"`` or ``"vit"``."""
        return "resnet" if isinstance(self.layers, tuple) else "vit"

    @property
    def heads(self) -> int:
        """Attention heads: of the attention pool (RN, over 32 * width channels) or of each ViT block."""
        return (self.width * 32 if self.kind == "resnet" else self.width) // self.head_width

    def validate(self) -> None:
        _check_range(self.image_size, 1, MAX_IMAGE_SIZE, "vision.image_size")
        _check_range(self.width, 1, MAX_WIDTH, "vision.width")
        _check_range(self.head_width, 1, MAX_WIDTH, "vision.head_width")
        for layers in self.layers if isinstance(self.layers, tuple) else (self.layers,):
            _check_range(layers, 1, MAX_LAYERS, "vision.layers")
        if self.kind == "resnet":
            if len(self.layers) != 4 or min(self.layers) < 1:  # type: ignore[arg-type]
                raise ModelCardError(f"vision.layers must be 4 positive ints for a ResNet, got {self.layers}")
            if self.image_size % 32:
                raise ModelCardError(f"ResNet image_size must be a multiple of 32, got {self.image_size}")
            if self.patch_size is not None:
                raise ModelCardError("vision.patch_size must be null for a ResNet (layers is a list)")
            if (self.width * 32) % self.head_width:
                raise ModelCardError(f"32 * width ({self.width * 32}) must be divisible by head_width")
        else:
            if not self.patch_size or self.image_size % self.patch_size:
                raise ModelCardError(
                    f"ViT needs a patch_size dividing image_size, got {self.patch_size} / {self.image_size}"
                )
            if self.width % self.head_width:
                raise ModelCardError(f"ViT width {self.width} must be divisible by head_width {self.head_width}")


@dataclass(frozen=True)
class TextCard:
    """Text tower: ``"clip"`` (CLIP text transformer + BPE tokenizer, trained with the image tower) or
    ``"minilm"`` (frozen all-MiniLM-L6-v2 + a learned projection into the joint space, "locked text")."""

    kind: str = "clip"
    context_length: int = 77  # clip: tokens per text, including start/end tokens
    vocab_size: int = 49408  # clip: BPE vocabulary size (open_clip's SimpleTokenizer)
    width: int = 512  # clip: transformer width
    heads: int = 8  # clip only
    layers: int = 12  # clip only
    projection: str = "linear"  # minilm: "linear" or "mlp" projection from the LM's 384-d output to embed_dim
    hidden_dim: int = 512  # minilm "mlp" projection: hidden width

    def validate(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ModelCardError(f"text.kind must be one of {TEXT_KINDS}, got {self.kind!r}")
        if self.kind == "clip":
            _check_range(self.context_length, 1, MAX_CONTEXT, "text.context_length")
            _check_range(self.vocab_size, 1, MAX_VOCAB, "text.vocab_size")
            _check_range(self.width, 1, MAX_WIDTH, "text.width")
            _check_range(self.heads, 1, MAX_WIDTH, "text.heads")
            _check_range(self.layers, 1, MAX_LAYERS, "text.layers")
        else:
            _check_range(self.hidden_dim, 1, MAX_WIDTH * 4, "text.hidden_dim")
        if self.kind == "clip" and self.width % self.heads:
            raise ModelCardError(f"text width {self.width} must be divisible by heads {self.heads}")
        if self.kind == "minilm" and self.projection not in ("linear", "mlp"):
            raise ModelCardError(f"text.projection must be 'linear' or 'mlp', got {self.projection!r}")


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild a model, plus optional provenance.

    ``quick_gelu``: OpenAI's released weights were trained with QuickGELU (``x * sigmoid(1.702 x)``);
    open_clip's own trainings and ours use exact GELU. The weights do not reveal which, so the card says.
    """

    name: str
    embed_dim: int  # dimension of the joint image-text space
    vision: VisionCard
    text: TextCard = field(default_factory=TextCard)
    quick_gelu: bool = False
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    weights_hash: str | None = None  # sha256 of the weights saved next to this card (set by save())
    training: Mapping[str, Any] = field(default_factory=dict)  # recipe, data, time (free form)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # measured results (free form)

    def __post_init__(self) -> None:
        _check_range(self.embed_dim, 1, MAX_WIDTH, "embed_dim")
        self.vision.validate()
        self.text.validate()

    def with_updates(self, **changes: Any) -> ModelCard:
        """A copy with some fields replaced (the card is frozen)."""
        return replace(self, **changes)

    def same_architecture(self, other: ModelCard) -> bool:
        """True when both cards build identical module trees (ignores name, hash and provenance)."""
        return (self.embed_dim, self.vision, self.text) == (other.embed_dim, other.vision, other.text)

    # ---- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = card_to_dict(self)
        data["vision"]["layers"] = list(self.vision.layers) if self.vision.kind == "resnet" else self.vision.layers
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    def to_json(self) -> str:
        return card_to_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> ModelCard:
        try:
            vision = dict(data["vision"])
            if isinstance(vision.get("layers"), list):
                vision["layers"] = tuple(int(n) for n in vision["layers"])
            text = dict(data.get("text", {}))
            return cls(
                name=str(data["name"]),
                embed_dim=int(data["embed_dim"]),
                vision=VisionCard(**vision),
                text=TextCard(**text),
                quick_gelu=bool(data.get("quick_gelu", False)),
                image_mean=tuple(float(v) for v in data.get("image_mean", OPENAI_CLIP_MEAN)),  # type: ignore[arg-type]
                image_std=tuple(float(v) for v in data.get("image_std", OPENAI_CLIP_STD)),  # type: ignore[arg-type]
                weights_hash=data.get("weights_hash"),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
            )
        except ModelCardError as exc:
            raise ModelCardError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCardError(f"{source}: not a valid model card ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> ModelCard:
        return cls.from_dict(parse_card_json(text, source=source, error=ModelCardError), source=source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    # ---- open_clip interop ---------------------------------------------------------------------

    def to_open_clip_config(self) -> dict[str, Any]:
        """The ``model_cfg`` dict open_clip uses: ``open_clip.model.CLIP(**cfg)`` builds the same
        architecture (with a CLIP text tower) without downloading anything."""
        if self.text.kind != "clip":
            raise ModelCardError(f"card {self.name!r}: open_clip has no equivalent of a {self.text.kind} text tower")
        vision: dict[str, Any] = {
            "image_size": self.vision.image_size,
            "layers": list(self.vision.layers) if self.vision.kind == "resnet" else self.vision.layers,
            "width": self.vision.width,
            "head_width": self.vision.head_width,
            "patch_size": self.vision.patch_size,
        }
        if self.vision.kind == "vit":
            vision["mlp_ratio"] = self.vision.mlp_ratio
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {
                "context_length": self.text.context_length,
                "vocab_size": self.text.vocab_size,
                "width": self.text.width,
                "heads": self.text.heads,
                "layers": self.text.layers,
            },
            "quick_gelu": self.quick_gelu,
        }


def available_cards() -> list[str]:
    """Names of the cards shipped with the package (``vl/cards/*.json``)."""
    folder = resources.files("regionprompt.vl") / "cards"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_card(name_or_path: str | Path) -> ModelCard:
    """A shipped card by name (``"RN50"``, ``"RN-tiny"``...), a ``card.json`` path, or a model directory."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "card.json"
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ModelCardError(f"model card not found: {path}")
        return ModelCard.from_json(path.read_text(encoding="utf-8"), source=str(path))
    name = str(name_or_path)
    shipped = resources.files("regionprompt.vl") / "cards" / f"{name}.json"
    if not shipped.is_file():
        raise ModelCardError(f"unknown model card {name!r}; shipped cards: {', '.join(available_cards())}")
    return ModelCard.from_json(shipped.read_text(encoding="utf-8"), source=f"card {name}")
