"""Model folders: ``model.safetensors`` + ``card.json``, the saved form of every model we train.

The card (any frozen card dataclass with ``weights_hash``, ``with_updates`` and ``to_json``) describes
the architecture and records the sha256 of the weights (:func:`tensors_hash`), so a changed or damaged
weights file is refused on load. Both files are written atomically: an interrupted save never leaves a
half-written file under its final name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from regionprompt.data.files import atomic_write
from regionprompt.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"


class Card(Protocol):
    """What a model folder needs of a card (a frozen dataclass)."""

    @property
    def weights_hash(self) -> str | None: ...

    def with_updates(self, **changes: Any) -> Any: ...

    def to_json(self) -> str: ...

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Any: ...


CardT = TypeVar("CardT", bound=Card)
ModelT = TypeVar("ModelT", bound=nn.Module)


def tensors_hash(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hex sha256 over (name, dtype, shape, bytes) of each tensor, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Row-sparse storage of a mostly-zero matrix (e.g. a token embedding whose unused rows were zeroed):
# "<name>::rows" (R,) int64 row indices, "<name>::values" (R, ...) those rows, "<name>::shape" the full shape.
_ROWS, _VALUES, _SHAPE = "::rows", "::values", "::shape"


def compact_state(state: Mapping[str, torch.Tensor], sparse_rows: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The stored form of ``state``: tensors named in ``sparse_rows`` keep only their non-zero rows."""
    stored = dict(state)
    for name in sparse_rows:
        full = stored.pop(name)
        rows = full.reshape(full.shape[0], -1).ne(0).any(dim=1).nonzero().flatten()
        stored[name + _ROWS], stored[name + _VALUES] = rows, full[rows].contiguous()
        stored[name + _SHAPE] = torch.tensor(full.shape, dtype=torch.int64)
    return stored


def expand_state(stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compact_state` (a no-op for ordinary files)."""
    state = {k: v for k, v in stored.items() if not k.endswith((_ROWS, _VALUES, _SHAPE))}
    for key in stored:
        if key.endswith(_SHAPE):
            name = key[: -len(_SHAPE)]
            values = stored[name + _VALUES]
            full = values.new_zeros(tuple(stored[key].tolist()))
            full[stored[name + _ROWS]] = values
            state[name] = full
    return state


def save_model_dir(directory: str | Path, state_dict: Mapping[str, torch.Tensor], card: CardT, *,
                   dtype: torch.dtype | None = None, sparse_rows: Iterable[str] = ()) -> CardT:
    """Write ``state_dict`` to ``directory/model.safetensors`` and ``card`` (with the weights hash) to
    ``directory/card.json``, each atomically; returns the card as written.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors for smaller files; ``sparse_rows`` names
    tensors stored row-sparse (:func:`compact_state`). The hash is over the tensors as loaded back.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    card = card.with_updates(weights_hash=tensors_hash(state.items()))
    stored = compact_state(state, sparse_rows)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(stored, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CARD_FILE, lambda tmp: Path(tmp).write_text(card.to_json(), encoding="utf-8"))
    return card


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; :class:`CheckpointError` naming the file if it cannot be read."""
    try:
        return expand_state(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {exc}") from None


def read_model_dir(
    directory: str | Path, card_type: type[CardT], *, kind: str = "model"
) -> tuple[CardT, dict[str, torch.Tensor]]:
    """The card and the weights of a folder written by :func:`save_model_dir`, weights verified against
    the card's hash (when it has one).

    ``card_type.from_json(text, source=...)`` reads ``card.json``; ``kind`` (e.g. ``"RPN"``) names the
    kind of folder in error messages.

    Raises:
        CheckpointError: the folder or one of its files is missing, the weights are unreadable or do not
            match the card's hash (or whatever ``card_type.from_json`` raises for a bad card).
    """
    directory = Path(directory)
    expected = f"expected {CARD_FILE} + {WEIGHTS_FILE}"
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such {kind} model folder ({expected})")
    card_path, weights_path = directory / CARD_FILE, directory / WEIGHTS_FILE
    for path in (card_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{directory}: not a {kind} model folder, missing {path.name} ({expected})")
    card = card_type.from_json(card_path.read_text(encoding="utf-8"), source=str(card_path))
    state = read_weights(weights_path)
    if card.weights_hash and tensors_hash(state.items()) != card.weights_hash:
        raise CheckpointError(f"{weights_path}: weights do not match the hash in {card_path} (file changed or damaged)")
    return card, state


def check_weights_fit(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """:class:`CheckpointError` (naming ``source``) unless ``state`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with other shapes (e.g. {wrong[:3]})" if wrong else ""]
        raise CheckpointError(f"{source}: " + ", ".join(p for p in parts if p))


def load_model_dir(
    directory: str | Path,
    card_type: type[CardT],
    build: Callable[[CardT], ModelT],
    *,
    kind: str = "model",
) -> ModelT:
    """A model from a folder written by :func:`save_model_dir`: read and verify it (:func:`read_model_dir`),
    ``build(card)`` the architecture, check the weights fit it and load them; returned in eval mode.

    Raises:
        CheckpointError: as :func:`read_model_dir`, or the weights do not fit the card's architecture.
    """
    card, state = read_model_dir(directory, card_type, kind=kind)
    model = build(card)
    folder = Path(directory)
    check_weights_fit(model, state, f"{folder / WEIGHTS_FILE} does not match the architecture of {folder / CARD_FILE}")
    model.load_state_dict(state)
    return model.eval()
