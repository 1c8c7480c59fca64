"""The EmojiWorld concept vocabulary: names, synonyms, frequency tiers and the fixed base/novel split.

Everything here is read from the vendored ``assets/concepts.json`` written by
``scripts/build_emoji_assets.py``; nothing is recomputed at import, so the split is fixed per
``SPLIT_VERSION``. Concept ids are 1-based and double as COCO category ids.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from regionprompt.errors import RegionPromptError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CONCEPTS_FILE = ASSETS_DIR / "concepts.json"
STYLES: tuple[str, ...] = ("google", "twitter")
FREQUENCIES: tuple[str, ...] = ("f", "c", "r")
SPLITS: tuple[str, ...] = ("base", "novel")


@dataclass(frozen=True)
class Concept:
    """One nameable object of the world, drawn in every style of :data:`STYLES`."""

    id: int  # 1-based, stable within a version; the COCO category id
    key: str  # unique slug, e.g. "dog_face"
    name: str  # clean lower-case display name, e.g. "dog face"
    synonyms: tuple[str, ...]  # other names that resolve uniquely to this concept
    category: str  # emoji category, e.g. "Animals & Nature"
    subcategory: str  # emoji subcategory, e.g. "animal-mammal"
    frequency: str  # LVIS-like tier from the sampling weight: "f" | "c" | "r"
    split: str  # "base" (boxes in det-train) | "novel" (never boxed in training)
    weight: float  # relative sampling weight in scenes, in (0, 1]
    group: str = ""  # near-duplicate family ("dog" for "dog" and "dog face"); may span splits
    emoji: str = ""  # the emoji character, for display only

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by its synonyms."""
        return (self.name, *self.synonyms)


def _load_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegionPromptError(
            f"EmojiWorld concepts not found at {path}; rebuild them with scripts/build_emoji_assets.py"
        ) from exc
    except (OSError, ValueError) as exc:
        raise RegionPromptError(f"cannot read EmojiWorld concepts {path}: {exc}") from exc


@functools.lru_cache(maxsize=1)
def load_index() -> dict[str, Any]:
    """The parsed ``assets/concepts.json`` (cached; treat as read-only)."""
    return _load_index(CONCEPTS_FILE)


SPLIT_VERSION: str = str(load_index()["version"])


class ConceptSet(Sequence[Concept]):
    """An ordered, immutable collection of concepts with look-ups by id and by name or synonym."""

    def __init__(self, concepts: Sequence[Concept], version: str) -> None:
        self._concepts = tuple(concepts)
        self.version = version
        self._by_id = {c.id: c for c in self._concepts}
        self._by_name = {c.name: c for c in self._concepts}
        # Names win over synonyms; the build guarantees synonyms never collide with names or each other.
        self._by_synonym = {s: c for c in self._concepts for s in c.synonyms}
        if len(self._by_id) != len(self._concepts) or len(self._by_name) != len(self._concepts):
            raise RegionPromptError(f"concept set {version!r} has duplicate ids or names")

    def __len__(self) -> int:
        return len(self._concepts)

    @overload
    def __getitem__(self, index: int) -> Concept: ...

    @overload
    def __getitem__(self, index: slice) -> ConceptSet: ...

    def __getitem__(self, index: int | slice) -> Concept | ConceptSet:
        if isinstance(index, slice):
            return ConceptSet(self._concepts[index], self.version)
        return self._concepts[index]

    def __iter__(self) -> Iterator[Concept]:
        return iter(self._concepts)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Concept):
            return self._by_id.get(item.id) == item
        if isinstance(item, str):
            return self._normalise(item) in self._by_name or self._normalise(item) in self._by_synonym
        return False

    def __repr__(self) -> str:
        return f"ConceptSet(version={self.version!r}, n={len(self)})"

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self._concepts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._concepts)

    def by_id(self, id: int) -> Concept:
        """The concept with COCO category id ``id``; raises :class:`RegionPromptError` if unknown."""
        try:
            return self._by_id[int(id)]
        except (KeyError, TypeError, ValueError):
            raise RegionPromptError(
                f"unknown EmojiWorld concept id {id!r} (this set of {len(self)} concepts, {self.version})"
            ) from None

    @staticmethod
    def _normalise(name: str) -> str:
        return " ".join(name.strip().lower().replace("_", " ").split())

    def by_name(self, name: str) -> Concept:
        """Look a concept up by name or synonym (case, underscores and extra spaces ignored)."""
        key = self._normalise(name) if isinstance(name, str) else ""
        found = self._by_name.get(key) or self._by_synonym.get(key)
        if found is None:
            close = sorted(n for n in self._by_name if key and (key in n or n in key))[:5]
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise RegionPromptError(
                f"unknown EmojiWorld concept {name!r} ({len(self)} concepts in {self.version}){hint}"
            )
        return found

    def subset(self, split: str | None = None, frequency: str | None = None) -> ConceptSet:
        """Concepts of one split ("base" / "novel") and/or one tier ("f" / "c" / "r"), order kept."""
        if split is not None and split not in SPLITS:
            raise RegionPromptError(f"unknown split {split!r}; expected one of {SPLITS}")
        if frequency is not None and frequency not in FREQUENCIES:
            raise RegionPromptError(f"unknown frequency tier {frequency!r}; expected one of {FREQUENCIES}")
        chosen = [c for c in self._concepts
                  if (split is None or c.split == split) and (frequency is None or c.frequency == frequency)]
        return ConceptSet(chosen, self.version)

    def sampling_probabilities(self, temperature: float = 1.0) -> np.ndarray:
        """(N,) float64 probabilities proportional to ``weight ** temperature``, in this set's order.

        ``temperature=1`` gives the long tail that defines the tiers (det-train); ``0`` is uniform, useful
        where every concept must appear often enough (caption pretraining, evaluation sets).
        """
        if not np.isfinite(temperature) or temperature < 0:
            raise RegionPromptError(f"sampling temperature must be a finite number >= 0, got {temperature!r}")
        if not self._concepts:
            raise RegionPromptError("cannot sample from an empty concept set")
        weights = np.array([c.weight for c in self._concepts], dtype=np.float64) ** temperature
        return weights / weights.sum()

    def coco_categories(self) -> list[dict[str, Any]]:
        """COCO ``categories`` entries with the open-vocabulary extras ``split``, ``frequency``, ``synonyms``."""
        return [
            {"id": c.id, "name": c.name, "supercategory": c.category, "split": c.split,
             "frequency": c.frequency, "synonyms": list(c.synonyms)}
            for c in self._concepts
        ]


def concepts_from_index(index: dict[str, Any]) -> ConceptSet:
    """Build a :class:`ConceptSet` from the parsed ``concepts.json`` mapping."""
    try:
        concepts = [
            Concept(id=int(c["id"]), key=c["key"], name=c["name"], synonyms=tuple(c["synonyms"]),
                    category=c["category"], subcategory=c["subcategory"], frequency=c["frequency"],
                    split=c["split"], weight=float(c["weight"]), group=c.get("group", ""),
                    emoji=c.get("emoji", ""))
            for c in index["concepts"]
        ]
        return ConceptSet(concepts, str(index["version"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RegionPromptError(f"malformed EmojiWorld concepts index: {exc!r}") from exc


@functools.lru_cache(maxsize=1)
def load_concepts() -> ConceptSet:
    """All EmojiWorld concepts of the vendored version (cached; immutable)."""
    return concepts_from_index(load_index())


def near_duplicates() -> list[dict[str, Any]]:
    """Near-duplicate groups whose members fall into different splits (e.g. "cat" base, "cat face" novel)."""
    return list(load_index().get("near_duplicates", []))
