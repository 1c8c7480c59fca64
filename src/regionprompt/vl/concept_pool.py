"""Concept pools from captions (RegionCLIP step 1): count noun phrases, threshold, deduplicate, save.

A pool is the vocabulary a region-text teacher labels regions with. Building one:

1. read captions (:func:`read_caption_units`): COCO captions JSON, JSON lines, or plain text;
2. parse each caption into canonical noun phrases (:mod:`regionprompt.vl.nouns`, backend ``spacy`` or
   ``rules``);
3. count each phrase once per image (a COCO image has five captions; a concept mentioned by all five
   counts once), merge spelling variants that differ only by spaces ("cellphone" / "cell phone"),
   keep phrases seen in at least ``min_count`` images, optionally the ``max_concepts`` most frequent;
4. write the pool file (:meth:`ConceptPool.save`, JSON, atomic) and optionally its text embeddings
   (:func:`save_pool_embeddings`, safetensors).

Pool file::

    {"version": 1, "source": "captions_val2017.json", "backend": "spacy", "min_count": 5,
     "concepts": [{"name": "man", "count": 1630}, ...]}      # count desc, then name asc
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from regionprompt.data.captions import read_captions
from regionprompt.data.files import atomic_write, atomic_write_text, dump_json
from regionprompt.errors import DatasetError
from regionprompt.logging_utils import get_logger, progress
from regionprompt.vl.nouns import PhraseExtractor, canonical_name, make_extractor

LOG = get_logger("vl.concepts")

POOL_VERSION = 1
DEFAULT_BACKEND = "spacy"

# Synonyms for COCO class names, used only to *measure* a pool (does it know the class under another
# name?). Multi-word names fall back to their head noun where captions say it that way ("dining table"
# -> "table"); single-word names map to true synonyms or spelling variants.
COCO_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "person": ("man", "woman", "people", "child", "boy", "girl"),
    "bicycle": ("bike",),
    "motorcycle": ("motorbike", "motor bike", "motor cycle"),
    "airplane": ("plane", "aeroplane", "jet", "airliner"),
    "traffic light": ("traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("hydrant",),
    "stop sign": ("sign",),
    "parking meter": ("meter",),
    "handbag": ("purse", "hand bag"),
    "tie": ("necktie",),
    "suitcase": ("luggage", "baggage"),
    "skis": ("ski",),
    "sports ball": ("ball", "soccer ball", "tennis ball", "baseball", "football"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "wine glass": ("glass", "wineglass"),
    "cup": ("mug",),
    "hot dog": ("hotdog", "sausage"),
    "donut": ("doughnut",),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "house plant", "flower pot"),
    "dining table": ("table",),
    "tv": ("television", "tv set"),
    "laptop": ("laptop computer", "notebook computer"),
    "remote": ("remote control", "controller"),
    "cell phone": ("phone", "cellphone", "mobile phone", "smartphone", "smart phone"),
    "refrigerator": ("fridge", "refrigerator freezer"),
    "teddy bear": ("teddy", "stuffed animal", "stuffed bear"),
    "hair drier": ("hair dryer", "blow dryer", "dryer", "blowdryer"),
    "toothbrush": ("tooth brush",),
}


@dataclass(frozen=True)
class CaptionUnit:
    """The captions of one counting unit: an image (COCO, JSON lines with an image key) or a line."""

    key: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class ConceptPool:
    """Concept names with the number of images (counting units) whose captions mention them.

    Attributes:
        names: concept names, most frequent first (ties by name), unique.
        counts: ``counts[i]`` = number of images mentioning ``names[i]``.
        backend: noun-phrase backend that produced the pool.
        source: caption file name(s) the pool was built from.
        min_count: the count threshold applied.
    """

    names: tuple[str, ...]
    counts: tuple[int, ...]
    backend: str
    source: str
    min_count: int
    version: int = POOL_VERSION

    def __post_init__(self) -> None:
        if len(self.names) != len(self.counts):
            raise ValueError(f"{len(self.names)} names but {len(self.counts)} counts")
        if len(set(self.names)) != len(self.names):
            raise ValueError("concept names must be unique")

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._name_set

    @property
    def _name_set(self) -> frozenset[str]:
        # Cached on the instance: frozen dataclasses allow object.__setattr__ for derived state.
        cached = self.__dict__.get("_names_cache")
        if cached is None:
            cached = frozenset(self.names)
            object.__setattr__(self, "_names_cache", cached)
        return cached

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "backend": self.backend,
            "min_count": self.min_count,
            "concepts": [{"name": n, "count": c} for n, c in zip(self.names, self.counts)],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pool JSON atomically (same pool -> byte-identical file); returns the path."""
        path = Path(path)
        try:
            atomic_write_text(path, dump_json(self.to_dict(), indent=1))
        except OSError as exc:
            raise DatasetError(f"cannot write concept pool {path}: {exc}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptPool:
        """Read a pool file written by :meth:`save`.

        Raises:
            DatasetError: missing file, invalid JSON, or not a concept pool.
        """
        path = Path(path)
        data = read_json_file(path, "concept pool")
        try:
            concepts = data["concepts"]
            names = tuple(str(c["name"]) for c in concepts)
            counts = tuple(int(c["count"]) for c in concepts)
            return cls(names, counts, str(data["backend"]), str(data["source"]), int(data["min_count"]), int(data["version"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: not a concept pool (expected version/source/backend/min_count/concepts): {exc}") from None


@dataclass(frozen=True)
class PoolStats:
    """What a pool build saw: sizes and wall time."""

    units: int  # images (or caption lines) counted
    captions: int
    unique_phrases: int  # distinct canonical phrases before thresholding
    kept: int  # concepts in the pool
    seconds: float  # parse + count time (model loading excluded)


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """Parse a small JSON file; a missing or invalid file raises :class:`DatasetError` naming ``what``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable {what} JSON ({exc})") from None


def read_caption_units(path: str | os.PathLike) -> list[CaptionUnit]:
    """Read a caption corpus into counting units.

    - ``.json``: COCO captions (``images`` + ``annotations[].caption/image_id``), one unit per image,
      read by :func:`regionprompt.data.captions.read_captions`;
    - ``.jsonl`` / ``.ndjson``: one object per line with ``"caption": str`` or ``"captions": [str]``;
      lines sharing ``file_name`` / ``image`` / ``image_id`` form one unit, other lines a unit each;
    - anything else: plain UTF-8 text, one caption per non-empty line, each line a unit.

    Raises:
        DatasetError: missing, unreadable or malformed file (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: caption file not found" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        dataset = read_captions(path).data
        return [CaptionUnit(f"{img.id if img.id is not None else img.file_name}", img.captions) for img in dataset.images]
    text = _read_text(path)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_units(path, text)
    return [CaptionUnit(f"line{i}", (line.strip(),)) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None


def _jsonl_units(path: Path, text: str) -> list[CaptionUnit]:
    # The shared JSON-lines reader (regionprompt.data.captions) requires an image per line; caption-only
    # corpora ({"caption": ...}) are common for concept mining, so they are accepted here.
    grouped: dict[str, list[str]] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
        raw = record.get("captions", [record["caption"]] if "caption" in record else None) if isinstance(record, dict) else None
        if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
            raise DatasetError(f"{path}:{line_no}: expected an object with 'caption' (string) or 'captions' (list of strings)")
        image = next((record[k] for k in ("file_name", "image", "image_id") if k in record), None)
        grouped.setdefault(f"image:{image}" if image is not None else f"line{line_no}", []).extend(c.strip() for c in raw if c.strip())
    return [CaptionUnit(key, tuple(captions)) for key, captions in grouped.items()]


def count_phrases(
    units: Sequence[CaptionUnit], extractor: PhraseExtractor, *, show_progress: bool = True
) -> tuple[Counter[str], int]:
    """Number of units whose captions mention each canonical phrase; also returns the caption count.

    Spelling variants that differ only in spaces ("cell phone" / "cellphone") are merged into the
    spelling seen in more units (ties: the one with spaces, then alphabetical); a unit mentioning
    both counts once.
    """
    owners = [i for i, unit in enumerate(units) for _ in unit.captions]
    captions = (c for unit in units for c in unit.captions)
    if show_progress:
        captions = progress(captions, desc=f"parsing captions ({extractor.name})", total=len(owners), unit="cap")
    per_unit: list[set[str]] = [set() for _ in units]
    for owner, phrases in zip(owners, extractor.extract(captions)):
        per_unit[owner].update(phrases)
    spelled = Counter(p for phrases in per_unit for p in phrases)
    canonical = _merge_spellings(spelled)
    counts: Counter[str] = Counter()
    for phrases in per_unit:
        counts.update({canonical[p] for p in phrases})
    return counts, len(owners)


def _merge_spellings(counts: Mapping[str, int]) -> dict[str, str]:
    """Map every phrase to the preferred spelling among those equal up to spaces."""
    groups: dict[str, list[str]] = {}
    for phrase in counts:
        groups.setdefault(phrase.replace(" ", ""), []).append(phrase)
    mapping: dict[str, str] = {}
    for variants in groups.values():
        best = min(variants, key=lambda p: (-counts[p], -p.count(" "), p))
        mapping.update((v, best) for v in variants)
    return mapping


def build_concept_pool(
    units: Sequence[CaptionUnit],
    *,
    backend: str | PhraseExtractor = DEFAULT_BACKEND,
    min_count: int = 5,
    max_concepts: int | None = None,
    source: str = "",
    show_progress: bool = True,
) -> tuple[ConceptPool, PoolStats]:
    """Parse, count and threshold the captions of ``units`` into a :class:`ConceptPool`.

    Args:
        backend: ``"spacy"``, ``"rules"`` or a ready :class:`~regionprompt.vl.nouns.PhraseExtractor`.
        min_count: keep phrases mentioned in at least this many units.
        max_concepts: keep at most this many (the most frequent); ``None`` keeps all above threshold.
        source: recorded in the pool file (e.g. the caption file name).
    """
    if min_count < 1:
        raise DatasetError(f"min_count must be >= 1, got {min_count}")
    if max_concepts is not None and max_concepts < 1:
        raise DatasetError(f"max_concepts must be >= 1, got {max_concepts}")
    extractor = make_extractor(backend) if isinstance(backend, str) else backend
    start = time.perf_counter()
    counts, n_captions = count_phrases(units, extractor, show_progress=show_progress)
    kept = sorted(((n, c) for n, c in counts.items() if c >= min_count), key=lambda item: (-item[1], item[0]))
    if max_concepts is not None:
        kept = kept[:max_concepts]
    pool = ConceptPool(tuple(n for n, _ in kept), tuple(c for _, c in kept), extractor.name, source, min_count)
    stats = PoolStats(len(units), n_captions, len(counts), len(pool), time.perf_counter() - start)
    LOG.info(
        "%s: %d captions, %d unique phrases, %d concepts with count >= %d (%.1f s)",
        extractor.name, n_captions, len(counts), len(pool), min_count, stats.seconds,
    )
    return pool, stats


@dataclass(frozen=True)
class Coverage:
    """How many names of a class list a pool contains.

    ``exact`` = the name itself (after canonicalisation: "skis" -> "ski", "teddy-bear" -> "teddy bear");
    ``via_synonym`` = not exact, but one of its synonyms is in the pool (which synonym is recorded).
    """

    total: int
    exact: tuple[str, ...]
    via_synonym: Mapping[str, str]
    missing: tuple[str, ...]

    @property
    def with_synonyms(self) -> int:
        return len(self.exact) + len(self.via_synonym)


def pool_coverage(pool: ConceptPool, names: Iterable[str], synonyms: Mapping[str, Sequence[str]] | None = None) -> Coverage:
    """Check which ``names`` the pool contains, exactly or through ``synonyms[name]``."""
    synonyms = synonyms or {}
    exact: list[str] = []
    via: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        if name in pool or canonical_name(name) in pool:
            exact.append(name)
            continue
        hit = next((s for s in synonyms.get(name, ()) if s in pool or canonical_name(s) in pool), None)
        if hit is None:
            missing.append(name)
        else:
            via[name] = hit
    return Coverage(len(exact) + len(via) + len(missing), tuple(exact), via, tuple(missing))


class PhraseEmbedder(Protocol):
    """What :func:`save_pool_embeddings` needs: ``embed(phrases) -> (N, D)`` (e.g. ``PromptEmbedder``)."""

    def embed(self, phrases: Sequence[str]) -> Any: ...


def save_pool_embeddings(pool: ConceptPool, embedder: PhraseEmbedder, path: str | os.PathLike) -> Path:
    """Embed every pool name and write ``path`` (safetensors, atomic).

    The file holds ``embeddings``: ``(N, D)`` float32, row ``i`` for ``pool.names[i]``; its metadata
    holds ``names`` (JSON list, the row order), ``backend``, ``source`` and ``min_count``.
    """
    import torch
    from safetensors.torch import save_file

    matrix = torch.as_tensor(embedder.embed(list(pool.names))).detach().to("cpu", torch.float32).contiguous()
    if matrix.ndim != 2 or matrix.shape[0] != len(pool):
        raise DatasetError(f"embedder returned shape {tuple(matrix.shape)} for {len(pool)} concepts; expected (N, D)")
    metadata = {
        "names": json.dumps(list(pool.names), ensure_ascii=False),
        "backend": pool.backend,
        "source": pool.source,
        "min_count": str(pool.min_count),
    }
    return atomic_write(path, lambda tmp: save_file({"embeddings": matrix}, tmp, metadata=metadata))


def load_pool_embeddings(path: str | os.PathLike) -> tuple[tuple[str, ...], Any]:
    """Read a file written by :func:`save_pool_embeddings`: ``(names, embeddings (N, D) float32 tensor)``.

    Raises:
        DatasetError: missing file or not a pool embedding file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: pool embedding file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = tuple(json.loads(metadata["names"]))
            matrix = handle.get_tensor("embeddings")
    except (SafetensorError, KeyError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a concept-pool embedding file ({type(exc).__name__}: {exc})") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(names):
        raise DatasetError(f"{path}: {len(names)} names but embeddings of shape {tuple(matrix.shape)}")
    return names, matrix
