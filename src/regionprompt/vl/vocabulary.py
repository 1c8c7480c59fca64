"""A CLIP image tower whose text side is a fixed vocabulary of stored text embeddings.

RegionCLIP's detector checkpoints hold no text encoder: its class names are embedded once, offline, by
CLIP's language encoder (the ``concept_emb/*.pth`` files, e.g. ``lvis_1203_cls_emb.pth``: one ``(D,)`` row
per name). :class:`VocabularyTextEncoder` serves those rows as a
:class:`~regionprompt.vl.text.TextEncoder`: ``encode_text(["cat"])`` returns the normalised row of
``cat``; a name outside the vocabulary is a :class:`~regionprompt.errors.PromptError` naming the file the
vocabulary came from. :class:`VocabularyCLIP` pairs it with a ResNet/ViT image tower, so the zero-shot
detector (text prompts from the vocabulary, box/point prompts from the image tower) works unchanged.

Saved form (a directory, e.g. the ``clip/`` folder of a detector)::

    model.safetensors   visual.*  (image tower, OpenAI/open_clip keys), logit_scale,
                        text.embeddings (N, D) float32 L2-normalised rows,
                        text.names (bytes,) uint8: the UTF-8 JSON list of the N names
    card.json           a ModelCard whose "text" entry is {"kind": "vocabulary", "size": N, "source": FILE}

The weights hash in ``card.json`` covers the names too (they are a tensor), so concepts made with one
vocabulary are refused by a model with another. :func:`load_clip_folder` reads either this form or an
ordinary :class:`~regionprompt.vl.clip_model.RegionPromptCLIP` folder.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regionprompt.errors import CheckpointError, PromptError
from regionprompt.model_dir import (
    CARD_FILE,
    read_model_dir,
    save_model_dir,
    tensors_hash,
)
from regionprompt.vl.cards import ModelCard, ModelCardError
from regionprompt.vl.clip_model import RegionPromptCLIP
from regionprompt.vl.image_encoder import build_image_encoder
from regionprompt.vl.text import check_texts

VOCABULARY_KIND = "vocabulary"


def vocabulary_key(name: str) -> str:
    """The lookup form of a name: case-folded, underscores as spaces, single spaces (LVIS writes
    ``aerosol_can``; users type ``Aerosol can``)."""
    return " ".join(name.replace("_", " ").casefold().split())


def _names_tensor(names: Sequence[str]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(list(names), ensure_ascii=False).encode("utf-8")), dtype=torch.uint8)


def _names_from_tensor(tensor: torch.Tensor, source: str) -> list[str]:
    try:
        names = json.loads(bytes(tensor.to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{source}: the stored vocabulary names are not valid UTF-8 JSON ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{source}: the stored vocabulary names are not a list of strings")
    return names


class VocabularyTextEncoder(nn.Module):
    """Fixed-vocabulary text side (implements :class:`~regionprompt.vl.text.TextEncoder`).

    Args:
        names: the N class names, in the row order of ``embeddings``.
        embeddings: ``(N, D)`` float text embeddings (any scale; stored L2-normalised).
        source: where the rows came from (a file name), quoted in errors.
    Raises:
        CheckpointError: rows != names, non-finite or all-zero rows, or two names with the same lookup key.
    """

    def __init__(self, names: Sequence[str], embeddings: torch.Tensor, *, source: str) -> None:
        super().__init__()
        names = [str(n) for n in names]
        embeddings = torch.as_tensor(embeddings).detach()
        if embeddings.ndim != 2 or not embeddings.is_floating_point():
            raise CheckpointError(f"{source}: text embeddings must be a float (N, D) tensor, got "
                                  f"{embeddings.dtype} {tuple(embeddings.shape)}")
        if embeddings.shape[0] != len(names):
            raise CheckpointError(f"{source}: {embeddings.shape[0]} embedding rows for {len(names)} names")
        embeddings = embeddings.float()
        if not torch.isfinite(embeddings).all():
            raise CheckpointError(f"{source}: the text embeddings hold inf or NaN")
        norms = embeddings.norm(dim=-1)
        if len(names) and norms.min() == 0:
            row = int(norms.argmin())
            raise CheckpointError(f"{source}: the embedding of {names[row]!r} (row {row}) is all zeros")
        index: dict[str, int] = {}
        for row, name in enumerate(names):
            key = vocabulary_key(name)
            if not key:
                raise CheckpointError(f"{source}: name {row} is empty")
            if key in index:
                raise CheckpointError(f"{source}: names {names[index[key]]!r} (row {index[key]}) and {name!r} "
                                      f"(row {row}) are the same name; each name must be unique")
            index[key] = row
        self.source = source
        self.embed_dim = int(embeddings.shape[1])
        self.names_list = names
        self._index = index
        self.register_buffer("embeddings", F.normalize(embeddings, dim=-1))
        self.register_buffer("names", _names_tensor(names))

    def __len__(self) -> int:
        return len(self.names_list)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and vocabulary_key(name) in self._index

    def row(self, name: str) -> int:
        """Row index of ``name`` (see :func:`vocabulary_key`); :class:`PromptError` if it is not known."""
        found = self._index.get(vocabulary_key(name))
        if found is None:
            close = difflib.get_close_matches(vocabulary_key(name), list(self._index), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(repr(self.names_list[self._index[c]]) for c in close)}?" if close else ""
            examples = ", ".join(repr(n) for n in self.names_list[:3])
            raise PromptError(
                f"{name!r} is not in the fixed vocabulary of this model: {len(self)} names from {self.source} "
                f"(e.g. {examples}){hint} -- a model imported from a concept-embedding file has no text encoder, "
                "so only those names (with the 'single' template set) can be text prompts"
            )
        return found

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, embed_dim)`` float32 stored rows, L2-normalised, in the order of ``texts``."""
        rows = [self.row(text) for text in check_texts(texts)]
        return self.embeddings[torch.tensor(rows, dtype=torch.long, device=self.embeddings.device)].float()

    def weights_hash(self) -> str:
        """sha256 of the rows and the names."""
        return tensors_hash([("embeddings", self.embeddings), ("names", self.names)])

    @classmethod
    def from_state(cls, embeddings: torch.Tensor, names: torch.Tensor, *, source: str) -> VocabularyTextEncoder:
        """Rebuild from the two saved tensors (``text.embeddings``, ``text.names``)."""
        return cls(_names_from_tensor(names, source), embeddings, source=source)


@dataclass(frozen=True)
class VocabularyCardFile:
    """What ``card.json`` of a :class:`VocabularyCLIP` folder holds: the image tower's :class:`ModelCard`
    (its own ``text`` entry is replaced on disk by the vocabulary's size and source)."""

    card: ModelCard
    size: int
    source: str

    @property
    def weights_hash(self) -> str | None:
        return self.card.weights_hash

    def with_updates(self, **changes: Any) -> VocabularyCardFile:
        """Field updates go to the inner card (``save_model_dir`` sets ``weights_hash`` this way)."""
        return replace(self, card=self.card.with_updates(**changes))

    def to_json(self) -> str:
        data = self.card.to_dict()
        data["text"] = {"kind": VOCABULARY_KIND, "size": self.size, "source": self.source}
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> VocabularyCardFile:
        try:
            data = json.loads(text)
            vocab = data.pop("text")
            if not isinstance(vocab, dict) or vocab.get("kind") != VOCABULARY_KIND:
                raise ValueError(f"text kind {vocab.get('kind') if isinstance(vocab, dict) else vocab!r} is not "
                                 f"{VOCABULARY_KIND!r}")
            return cls(ModelCard.from_dict(data, source=source), int(vocab["size"]), str(vocab["source"]))
        except ModelCardError as exc:
            raise CheckpointError(str(exc)) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{source}: not a fixed-vocabulary model card ({exc})") from None


class VocabularyCLIP(RegionPromptCLIP):
    """An image tower (``visual``, as in :class:`RegionPromptCLIP`) with a :class:`VocabularyTextEncoder`
    (``text``) instead of a text transformer.

    Everything that embeds images or regions works as for any CLIP model; text goes through the
    vocabulary. ``card`` is the image tower's :class:`ModelCard`; its ``text`` entry describes nothing
    (see :attr:`vocabulary`).
    """

    def __init__(self, card: ModelCard, vocabulary: VocabularyTextEncoder, *, logit_scale: float = math.log(100.0),
                 initialize: bool = True) -> None:
        nn.Module.__init__(self)  # not RegionPromptCLIP.__init__: it would build a text tower
        if vocabulary.embed_dim != card.embed_dim:
            raise CheckpointError(f"the vocabulary ({vocabulary.source}) has {vocabulary.embed_dim}-d embeddings, "
                                  f"but the image tower embeds in {card.embed_dim} dimensions")
        self.card = card
        self.embed_dim = card.embed_dim
        if initialize:
            self.visual = build_image_encoder(card)
        else:  # to be filled by load_state_dict: skip the random initialisation (seconds for RN50)
            with torch.device("meta"):
                visual = build_image_encoder(card)
            visual.to_empty(device="cpu")
            visual.set_pixel_stats(card)
            self.visual = visual
        self.text = vocabulary
        self.tokenizer = None
        # RegionCLIP scores with temperature 0.01: exp(logit_scale) = 100.
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    @property
    def vocabulary(self) -> VocabularyTextEncoder:
        return self.text  # type: ignore[return-value]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise TypeError(f"model {self.card.name!r} has a fixed vocabulary ({self.vocabulary.source}), not CLIP tokens")

    def encode_tokens(self, tokens: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        raise TypeError(f"model {self.card.name!r} has a fixed vocabulary ({self.vocabulary.source}), not CLIP tokens")

    def embed_texts(self, texts: Sequence[str] | torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Names -> their stored rows ``(N, D)`` (always normalised; not trainable)."""
        if isinstance(texts, torch.Tensor):
            raise TypeError("a fixed-vocabulary model takes names, not tokens")
        return self.vocabulary.encode_text(texts)

    def text_encoder(self) -> VocabularyTextEncoder:  # type: ignore[override]
        return self.vocabulary

    def save(self, directory: str | Path) -> ModelCard:
        """Write ``model.safetensors`` + ``card.json`` (module docstring), each atomically; returns the card."""
        vocab = self.vocabulary
        written = save_model_dir(directory, self.state_dict(), VocabularyCardFile(self.card, len(vocab), vocab.source))
        self.card = written.card
        return self.card

    @classmethod
    def load(cls, directory: str | Path) -> VocabularyCLIP:
        """Load a folder written by :meth:`save` (weights verified against the card's hash); eval mode."""
        folder = Path(directory)
        meta, state = read_model_dir(folder, VocabularyCardFile, kind="fixed-vocabulary CLIP")
        source = str(folder / "model.safetensors")
        for key in ("text.embeddings", "text.names"):
            if key not in state:
                raise CheckpointError(f"{source}: missing {key} (not a fixed-vocabulary model)")
        vocabulary = VocabularyTextEncoder.from_state(state["text.embeddings"], state["text.names"], source=meta.source)
        if len(vocabulary) != meta.size:
            raise CheckpointError(f"{source}: {len(vocabulary)} names stored, {meta.size} in {folder / CARD_FILE}")
        model = cls(meta.card, vocabulary, initialize=False)
        expected = model.state_dict()
        wrong = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        extra = [k for k in state if k not in expected]
        shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if wrong or extra or shapes:
            raise CheckpointError(f"{source}: does not match {folder / CARD_FILE}: missing {wrong[:3]}, "
                                  f"unexpected {extra[:3]}, other shapes {shapes[:3]}")
        full = {k: state.get(k, torch.zeros_like(v)) for k, v in expected.items()}
        model.load_state_dict(full)
        return model.eval()


def load_clip_folder(directory: str | Path) -> RegionPromptCLIP:
    """The CLIP model saved in ``directory``: a :class:`VocabularyCLIP` when its card's text kind is
    ``"vocabulary"``, else an ordinary :class:`RegionPromptCLIP` (``RegionPromptCLIP.load``)."""
    path = Path(directory) / CARD_FILE
    try:
        text = json.loads(path.read_text(encoding="utf-8")).get("text")
        kind = text.get("kind") if isinstance(text, dict) else None
    except (OSError, ValueError, AttributeError):
        kind = None  # let the ordinary loader report the missing or broken card
    if kind == VOCABULARY_KIND:
        return VocabularyCLIP.load(directory)
    return RegionPromptCLIP.load(directory)


__all__ = ["VOCABULARY_KIND", "VocabularyCLIP", "VocabularyTextEncoder", "load_clip_folder", "vocabulary_key"]
