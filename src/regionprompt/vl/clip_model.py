"""RegionPromptCLIP: a CLIP image tower, a text tower and a learnable temperature, built from a model card.

With a ``"clip"`` text card the module tree mirrors OpenAI's CLIP, so ``state_dict()`` keys are exactly
those of OpenAI / open_clip checkpoints (``visual.*``, ``transformer.*``, ``token_embedding.weight``,
``positional_embedding``, ``ln_final.*``, ``text_projection``, ``logit_scale``). With a ``"minilm"`` card the
text side is :class:`regionprompt.vl.text.LockedTextEncoder` under ``text.*`` (only its projection is saved).

Saved form (a directory): ``model.safetensors`` + ``card.json`` (with the sha256 of the weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.errors import CheckpointError
from regionprompt.model_dir import CARD_FILE, WEIGHTS_FILE, read_weights, save_model_dir, tensors_hash
from regionprompt.vl.cards import ModelCard, ModelCardError, load_card
from regionprompt.vl.image_encoder import ImageEncoder, build_image_encoder
from regionprompt.vl.open_clip_parts import import_parts
from regionprompt.vl.text import TextEncoder, check_texts

_tokenizer, _transformer = import_parts("tokenizer", "transformer")
SimpleTokenizer = _tokenizer.SimpleTokenizer
LayerNorm, QuickGELU, TextTransformer = _transformer.LayerNorm, _transformer.QuickGELU, _transformer.TextTransformer

#: Top-level state-dict prefixes of the CLIP text tower (everything that determines text embeddings).
CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
#: Longest text context a loaded model may have: the causal mask, built rather than read from the file,
#: takes context_length**2 floats (CLIP: 77; long-context variants a few hundred).
MAX_CONTEXT_LENGTH = 4096
#: Buffers some exporters drop; the model's own value (a step counter unused in eval) is kept.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class RegionPromptCLIP(nn.Module):
    """CLIP-style dual encoder.

    Attributes:
        card: the :class:`ModelCard` it was built from.
        visual: :class:`ResNetImageEncoder` or :class:`ViTImageEncoder` (feature extractor + pooling).
        logit_scale: learnable log inverse temperature (initialised to log(1 / 0.07), as CLIP).
    """

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.card = card
        self.embed_dim = card.embed_dim
        self.visual: ImageEncoder = build_image_encoder(card)
        if card.text.kind == "clip":
            text = TextTransformer(
                context_length=card.text.context_length,
                vocab_size=card.text.vocab_size,
                width=card.text.width,
                heads=card.text.heads,
                layers=card.text.layers,
                output_dim=card.embed_dim,
                act_layer=QuickGELU if card.quick_gelu else nn.GELU,
                norm_layer=LayerNorm,
            )
            # Adopt the text tower's parts at top level: that is OpenAI's (and open_clip CLIP's) key layout.
            self.transformer = text.transformer
            self.token_embedding = text.token_embedding
            self.positional_embedding = text.positional_embedding
            self.ln_final = text.ln_final
            self.text_projection = text.text_projection
            self.register_buffer("attn_mask", text.attn_mask, persistent=False)
            self.tokenizer: SimpleTokenizer | None = SimpleTokenizer(context_length=card.text.context_length)
        else:
            from regionprompt.vl.text import LockedTextConfig, LockedTextEncoder

            hidden = None if card.text.projection == "linear" else card.text.hidden_dim
            self.text = LockedTextEncoder(LockedTextConfig(embed_dim=card.embed_dim, hidden_dim=hidden))
            self.tokenizer = None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @classmethod
    def uninitialized(cls, card: ModelCard) -> RegionPromptCLIP:
        """A model whose saved tensors hold arbitrary values, to be filled by ``load_state_dict``.

        Skips the random initialisation (seconds for RN50 / ViT-B-32): built on the meta device, then
        given real memory; the constant, non-saved buffers are recomputed. Locked-text cards load their
        frozen language model in ``__init__`` and are built normally.
        """
        if card.text.kind != "clip":
            return cls(card)
        with torch.device("meta"):
            model = cls(card)
        model.to_empty(device="cpu")
        model.visual.set_pixel_stats(card)
        # Causal mask as open_clip builds it: -inf above the diagonal.
        length = card.text.context_length
        model.attn_mask = torch.full((length, length), float("-inf")).triu_(1)
        return model

    # ---- images ----------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """``(B, 3, H, W)`` float RGB in [0, 1] (any H, W) -> ``(B, embed_dim)`` embeddings, L2-normalised
        unless ``normalize=False``. Differentiable; wrap in ``torch.no_grad()`` for inference."""
        features = self.visual(self.visual.normalize(images))
        return F.normalize(features, dim=-1) if normalize else features

    # ---- texts -----------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP BPE tokens ``(N, context_length)`` int64 (truncated, end token kept). CLIP text cards only."""
        if self.tokenizer is None:
            raise TypeError(f"model {self.card.name!r} has a {self.card.text.kind} text tower, not CLIP tokens")
        return self.tokenizer(check_texts(texts)).to(self.logit_scale.device)

    def encode_tokens(self, tokens: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """CLIP tokens ``(N, context_length)`` -> ``(N, embed_dim)``: the end-of-text token's output, projected."""
        # The end-of-text token has the largest id, so argmax finds it (OpenAI's pooling).
        eot = tokens.argmax(dim=-1)
        # Causal attention: positions after the last end-of-text token cannot influence the pooled
        # outputs, so dropping that padding gives identical embeddings at a fraction of the cost.
        length = int(eot.max()) + 1 if tokens.shape[0] else tokens.shape[1]
        tokens = tokens[:, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def embed_texts(self, texts: Sequence[str] | torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Texts (or pre-computed CLIP tokens) -> ``(N, embed_dim)``, differentiable (for training)."""
        if self.card.text.kind == "clip":
            tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
            return self.encode_tokens(tokens, normalize=normalize)
        feats = self.text(check_texts(texts))  # type: ignore[arg-type]
        return F.normalize(feats, dim=-1) if normalize else feats

    def text_encoder(self) -> TextEncoder:
        """The frozen-inference view of the text side implementing :class:`regionprompt.vl.text.TextEncoder`."""
        if self.card.text.kind == "clip":
            return ClipTextEncoder(self)
        return self.text

    # ---- training --------------------------------------------------------------------------------

    def forward(
        self, images: torch.Tensor, texts: Sequence[str] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` images in [0, 1] and B texts -> (image embeddings ``(B, D)``, text embeddings
        ``(B, D)``, both L2-normalised, and ``exp(logit_scale)``), ready for a symmetric InfoNCE loss."""
        return self.encode_image(images), self.embed_texts(texts), self.logit_scale.exp()

    # ---- persistence -----------------------------------------------------------------------------

    def weights_hash(self) -> str:
        """sha256 of all saved tensors."""
        return tensors_hash(self.state_dict().items())

    def save(self, directory: str | Path) -> ModelCard:
        """Write ``model.safetensors`` and ``card.json`` (card updated with the weights hash) to ``directory``.

        Each file is written to a temporary name and renamed, so an interrupted save never leaves a
        half-written file under the final name. Returns the card as written.
        """
        self.card = save_model_dir(directory, self.state_dict(), self.card)
        return self.card

    @classmethod
    def load(cls, directory: str | Path) -> RegionPromptCLIP:
        """Load a directory written by :meth:`save` (weights verified against the card's hash)."""
        return load_clip_dir(Path(directory))


def build_clip(card: ModelCard | str) -> RegionPromptCLIP:
    """A randomly initialised model from a card or a card name/path (``"RN-tiny"``, ``"RN50"``...)."""
    return RegionPromptCLIP(card if isinstance(card, ModelCard) else load_card(card))


class ClipTextEncoder:
    """The CLIP text tower of a :class:`RegionPromptCLIP` as a :class:`~regionprompt.vl.text.TextEncoder`.

    Shares the model's modules (no copy), so it always reflects the current weights.
    """

    def __init__(self, model: RegionPromptCLIP, *, batch_size: int = 256) -> None:
        if model.card.text.kind != "clip":
            raise TypeError(f"model {model.card.name!r} has no CLIP text tower")
        self.model = model
        self.embed_dim = model.embed_dim
        self.batch_size = batch_size
        self._hash_key: tuple | None = None
        self._hash = ""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, embed_dim)`` float32, L2-normalised, computed under ``torch.no_grad()`` in eval mode."""
        texts = check_texts(texts)
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                chunks = [
                    model.encode_tokens(model.tokenize(texts[i : i + self.batch_size])).float()
                    for i in range(0, len(texts), self.batch_size)
                ]
        finally:
            model.train(was_training)
        if not chunks:
            return torch.zeros(0, self.embed_dim, device=model.logit_scale.device)
        return torch.cat(chunks)

    def _text_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in self.model.state_dict().items() if k.startswith(CLIP_TEXT_KEYS)]

    def weights_hash(self) -> str:
        """sha256 of the text-tower tensors, the tokenizer's context length and the activation.

        Recomputed only when a tensor changed: in-place updates (optimizer steps, ``load_state_dict``)
        bump each tensor's version counter, which is part of the memo key.
        """
        tensors = self._text_tensors()
        key = tuple((k, v.data_ptr(), v._version) for k, v in tensors)
        if key != self._hash_key:
            card = self.model.card
            extra = torch.tensor([card.text.context_length, int(card.quick_gelu)], dtype=torch.int64)
            self._hash = tensors_hash([*tensors, ("__config__", extra)])
            self._hash_key = key
        return self._hash


# ---- loading: our own directories, and the shape checks every loader runs ---------------------------


def describe_card(card: ModelCard) -> str:
    """One line of a card's architecture, for error messages."""
    v = card.vision
    tower = f"ResNet layers {v.layers} width {v.width}" if v.kind == "resnet" else f"ViT-{v.layers}L width {v.width} patch {v.patch_size}"
    return f"{tower}, {v.image_size} px, embed {card.embed_dim}, text {card.text.layers}L width {card.text.width}"


def check_state_dict(model: RegionPromptCLIP, state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Compare ``state`` with the model's keys and shapes; the dict to load (optional buffers filled in).

    Raises :class:`CheckpointError` listing shape mismatches first (an architecture mismatch), then
    missing and unexpected keys (a few of each).
    """
    expected = model.state_dict()
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    if mismatched:
        raise CheckpointError(
            f"{source}: architecture mismatch with card {model.card.name!r} ({describe_card(model.card)}): "
            f"{len(mismatched)} tensors differ, e.g. " + "; ".join(mismatched[:3])
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(f"{source}: does not match card {model.card.name!r}: " + "; ".join(parts))
    full = dict(state)
    for k, v in expected.items():
        if k not in full:  # an optional step counter: zero, as a freshly built BatchNorm has
            full[k] = torch.zeros_like(v, device="cpu")
    return full


def meta_model(card: ModelCard) -> RegionPromptCLIP:
    """The module tree of ``card`` on the meta device (shapes, no memory), to compare with a file's
    tensors before anything is allocated. Locked-text cards load a language model in ``__init__`` and
    come from our own shipped cards, so they are built as they are."""
    if card.text.kind != "clip":
        return RegionPromptCLIP.uninitialized(card)
    if card.text.context_length > MAX_CONTEXT_LENGTH:  # its causal mask is context_length**2 floats
        raise CheckpointError(f"card {card.name!r}: context length {card.text.context_length} is implausible "
                              f"(the limit is {MAX_CONTEXT_LENGTH})")
    with torch.device("meta"):
        return RegionPromptCLIP(card)


def load_clip_dir(directory: Path, card: ModelCard | None = None) -> RegionPromptCLIP:
    """A model directory written by :meth:`RegionPromptCLIP.save`, weights verified against the card's hash;
    ``card``: the architecture it must have (``None``: any). Returned in eval mode."""
    try:
        saved = load_card(directory / CARD_FILE)
    except ModelCardError as exc:
        raise CheckpointError(str(exc)) from None
    if card is not None and not card.same_architecture(saved):
        raise CheckpointError(
            f"{directory}: saved model is {saved.name!r} ({describe_card(saved)}), not the requested "
            f"{card.name!r} ({describe_card(card)})"
        )
    weights = directory / WEIGHTS_FILE
    state = read_weights(weights)
    if saved.weights_hash and tensors_hash(state.items()) != saved.weights_hash:
        raise CheckpointError(f"{weights}: weights do not match the hash in {CARD_FILE} (modified or corrupted file)")
    check_state_dict(meta_model(saved), state, str(weights))  # before allocating what the card says
    model = RegionPromptCLIP.uninitialized(saved)
    model.load_state_dict(check_state_dict(model, state, str(weights)))
    return model.eval()
