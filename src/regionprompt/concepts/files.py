"""The concept file: one :class:`~regionprompt.concept.PromptConcept` as a ``.safetensors`` file.

Layout: two float32 tensors, ``embedding`` ``(D,)`` and ``negatives`` ``(M, D)`` (``M`` may be 0), an
optional third, ``namer_embedding`` ``(E,)`` (the region namer's embedding of the exemplars, see
:class:`~regionprompt.concept.PromptConcept`), and the safetensors header's string metadata::

    format          "regionprompt-concept"
    format_version  "1"
    name            the concept's name
    model_hash      hash of the model that computed the embeddings
    created         ISO 8601 UTC time, e.g. "2026-11-25T12:00:00Z"
    sources         JSON list of the prompts used (text, or image hash + box)

Safetensors holds no code, so a foreign concept file can be read without risk. The same bytes are
what :class:`~regionprompt.concepts.library.ConceptLibrary` stores per concept, so export is a copy.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from regionprompt.concept import PromptConcept
from regionprompt.data.files import atomic_write
from regionprompt.errors import RegionPromptError
from regionprompt.untrusted import loads_json

FORMAT = "regionprompt-concept"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"

# A concept is a few KiB; these bounds only stop a wrong or hostile file from being read whole.
MAX_HEADER_BYTES = 8 << 20
MAX_FILE_BYTES = 256 << 20


class ConceptFileError(RegionPromptError):
    """A concept file (or library record) is missing, truncated, corrupt or not a concept at all."""


@dataclass(frozen=True)
class StoredConcept:
    """A concept as stored: the concept plus when it was made.

    Attributes:
        concept: the prompt concept (embedding ``(D,)``, negatives ``(M, D)``).
        created: ISO 8601 UTC creation time, ``"YYYY-MM-DDTHH:MM:SSZ"``.
        format_version: the file format version it was read from.
    """

    concept: PromptConcept
    created: str
    format_version: int = FORMAT_VERSION


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, ``"2026-11-25T12:00:00Z"``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_created(created: str, where: str) -> str:
    try:
        datetime.fromisoformat(created)
    except (ValueError, AttributeError):
        raise ConceptFileError(f"{where}: creation time {created!r} is not an ISO 8601 time") from None
    return created


def concept_to_bytes(concept: PromptConcept, *, created: str | None = None) -> bytes:
    """Encode ``concept`` as the bytes of a concept file (see the module doc)."""
    try:
        sources = json.dumps(list(concept.sources), ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConceptFileError(f"concept {concept.name!r}: sources are not JSON-serialisable ({exc})") from None
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "name": concept.name,
        "model_hash": concept.model_hash,
        "created": _check_created(created or utc_now(), f"concept {concept.name!r}"),
        "sources": sources,
    }
    tensors = {
        "embedding": concept.embedding.detach().to("cpu", torch.float32).contiguous(),
        "negatives": concept.negatives.detach().to("cpu", torch.float32).contiguous(),
    }
    if concept.namer_embedding is not None:
        tensors["namer_embedding"] = concept.namer_embedding.detach().to("cpu", torch.float32).contiguous()
    return save_tensors(tensors, metadata=metadata)


def _read_header(data: bytes, where: str) -> dict[str, Any]:
    if len(data) < 8:
        raise ConceptFileError(f"{where}: too short to be a concept file ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise ConceptFileError(f"{where}: not a concept file (header length {header_len} is implausible)")
    if 8 + header_len > len(data):
        raise ConceptFileError(
            f"{where}: truncated file (its header needs {8 + header_len} bytes, the file has {len(data)})"
        )
    try:
        header = loads_json(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConceptFileError(f"{where}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ConceptFileError(f"{where}: not a safetensors file (its header is not a JSON object)")
    # Every field checked here, where a wrong type can be named; safetensors (or our own code) would
    # otherwise fail later with a TypeError or a generic message.
    ends = []
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise ConceptFileError(f"{where}: tensor entry {key[:80]!r} is not a JSON object")
        ends.append(_check_tensor_entry(spec, key, where))
    # safetensors would report a short data section as a generic error; name it truncation here.
    needed = 8 + header_len + max(ends, default=0)
    if needed > len(data):
        raise ConceptFileError(f"{where}: truncated file (its tensors need {needed} bytes, the file has {len(data)})")
    return header


def _check_tensor_entry(spec: dict[str, Any], key: str, where: str) -> int:
    """The end offset of one tensor's header entry after checking its field types."""
    name = f"{where}: tensor {key[:80]!r}"
    offsets, shape, dtype = spec.get("data_offsets"), spec.get("shape"), spec.get("dtype")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(v) for v in offsets)
            and offsets[0] <= offsets[1]):
        raise ConceptFileError(f"{name}: data_offsets must be two ascending non-negative integers, got {offsets!r:.80}")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_count(v) for v in shape)):
        raise ConceptFileError(f"{name}: shape must be a list of non-negative integers, got {shape!r:.80}")
    if not isinstance(dtype, str):
        raise ConceptFileError(f"{name}: dtype must be a string, got {dtype!r:.80}")
    return int(offsets[1])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor(tensors: dict[str, torch.Tensor], key: str, ndim: int, where: str) -> torch.Tensor:
    tensor = tensors.get(key)
    if tensor is None:
        raise ConceptFileError(f"{where}: concept file has no {key!r} tensor")
    if tensor.ndim != ndim or not tensor.is_floating_point():
        raise ConceptFileError(f"{where}: {key!r} must be a {ndim}-d float tensor, got {tensor.dtype} {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ConceptFileError(f"{where}: {key!r} holds NaN or infinite values")
    return tensor


def concept_from_bytes(data: bytes, *, where: str = "<concept bytes>") -> StoredConcept:
    """Decode concept-file bytes; ``where`` names the source in error messages.

    Raises:
        ConceptFileError: truncated, corrupt, not a concept, a newer format, or inconsistent tensors.
    """
    header = _read_header(data, where)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConceptFileError(f"{where}: a safetensors file, but not a RegionPrompt concept (no format {FORMAT!r} in its metadata)")
    raw_version = meta.get("format_version")
    # safetensors metadata values are strings; a list or number here is a hand-made (or hostile) file.
    if not isinstance(raw_version, str) or not raw_version.strip().isdigit() or len(raw_version) > 9:
        raise ConceptFileError(f"{where}: bad format_version {raw_version!r:.80} (expected a string such as \"1\")")
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise ConceptFileError(
            f"{where}: written by a newer RegionPrompt (concept format {version}; this version reads up to {FORMAT_VERSION})"
        )
    for key in ("name", "model_hash", "created", "sources"):
        if not isinstance(meta.get(key), str):
            raise ConceptFileError(f"{where}: concept metadata lacks {key!r} (or it is not a string)")
    try:
        sources = loads_json(meta["sources"])
    except json.JSONDecodeError:
        raise ConceptFileError(f"{where}: concept metadata 'sources' is not JSON") from None
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise ConceptFileError(f"{where}: concept metadata 'sources' must be a JSON list of objects")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ConceptFileError(f"{where}: corrupt tensor data ({exc})") from None
    embedding = _tensor(tensors, "embedding", 1, where)
    negatives = _tensor(tensors, "negatives", 2, where)
    if negatives.shape[0] and negatives.shape[1] != embedding.shape[0]:
        raise ConceptFileError(f"{where}: negatives {tuple(negatives.shape)} do not match embedding dim {embedding.shape[0]}")
    if embedding.numel() == 0 or not math.isfinite(float(embedding.norm())) or float(embedding.norm()) == 0.0:
        raise ConceptFileError(f"{where}: the concept embedding is empty or zero")
    namer_embedding = _tensor(tensors, "namer_embedding", 1, where) if "namer_embedding" in tensors else None
    try:
        concept = PromptConcept(
            name=meta["name"], embedding=embedding, model_hash=meta["model_hash"], negatives=negatives,
            sources=tuple(sources), namer_embedding=namer_embedding,
        )
    except RegionPromptError as exc:
        raise ConceptFileError(f"{where}: {exc}") from None
    return StoredConcept(concept, _check_created(meta["created"], where), version)


def save_concept(concept: PromptConcept, path: str | os.PathLike, *, created: str | None = None) -> Path:
    """Write ``concept`` to ``path`` atomically (``.safetensors`` is the usual suffix); returns the path."""
    data = concept_to_bytes(concept, created=created)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_concept_file(path: str | os.PathLike) -> StoredConcept:
    """Read a concept file with its creation time.

    Raises:
        ConceptFileError: missing, unreadable, truncated, corrupt or not a concept file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConceptFileError(f"{path}: {size} bytes is far too large for a concept file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConceptFileError(f"{path}: cannot read ({exc.strerror})") from None
    return concept_from_bytes(data, where=str(path))


def load_concept(path: str | os.PathLike) -> PromptConcept:
    """Read the concept in a concept file (see :func:`read_concept_file`)."""
    return read_concept_file(path).concept
