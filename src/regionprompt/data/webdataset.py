"""Image-caption pairs as WebDataset tar shards: written from COCO captions / JSON lines, read as a stream.

Layout (what ``img2dataset`` writes, and what ``webdataset`` reads): a folder of ``PREFIX-NNNNN.tar``
files, each holding consecutive samples; a sample is the members sharing a key (the file name up to its
first dot), stored next to each other:

* ``KEY.jpg`` (or ``.jpeg`` / ``.png`` / ``.webp``) -- the encoded image, bytes as in the source file;
* ``KEY.txt`` -- one caption (UTF-8), the first of the image's captions;
* ``KEY.json`` -- ``{"key", "file_name", "captions": [...], "id"?, "width"?, "height"?}``.

Keys are 9-digit sample numbers (``000000042``), unique across the shards. :func:`write_shards` also
writes ``shards.json`` (each shard's name, sample count and sha256), which readers use to know the data
size without opening the tars; shards from elsewhere (``img2dataset``) work without it.

Reading (:class:`ShardStream`) is sequential, as on a cluster filesystem or object store: each epoch
visits the shards in a seeded order, a rank reads its own subset (the shards ``r, r + N, ...`` when there
are at least as many shards as ranks, else every N-th sample of every shard), and samples pass through
a seeded shuffle buffer (the shuffle of an epoch ends with it, so every sample is seen once per epoch).
Everything is a function of (seed, rank, world size), so the ``k``-th sample a rank sees is too: a
resumed run skips the samples it had consumed (reading, not decoding them) and continues with the same
batches.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regionprompt.data.captions import CaptionDataset
from regionprompt.data.files import atomic_write, atomic_write_text
from regionprompt.errors import DatasetError
from regionprompt.untrusted import loads_json

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "shards.json"


@dataclass(frozen=True)
class Sample:
    """One image-caption sample of a shard.

    Attributes:
        key: the sample key (``000000042``).
        image: the encoded image bytes (decode with :func:`regionprompt.images.load_image`).
        captions: the captions (from ``.json``, else the ``.txt`` caption).
        meta: the ``.json`` record (empty when the sample has none).
    """

    key: str
    image: bytes
    captions: tuple[str, ...]
    meta: dict[str, Any]


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644  # fixed metadata: the same input gives the same bytes
    return info


def write_shards(dataset: CaptionDataset, image_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 samples_per_shard: int = 1000, prefix: str = "shard") -> list[dict[str, Any]]:
    """Write the captioned images of ``dataset`` (files under ``image_dir``) as tar shards into ``out_dir``.

    Images without captions are left out. Each shard is written atomically and a shard already present
    with the same sha256 as planned is kept, so a killed run rerun completes the set. Returns the
    entries of ``shards.json``.

    Raises:
        DatasetError: an image file is missing or has a suffix other than :data:`IMAGE_EXTENSIONS`.
    """
    if samples_per_shard < 1:
        raise DatasetError("samples_per_shard must be at least 1")
    image_dir, out = Path(image_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [img for img in dataset.images if img.captions]
    entries = []
    for number, first in enumerate(range(0, len(images), samples_per_shard)):
        chunk = images[first : first + samples_per_shard]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for offset, img in enumerate(chunk):
                key = f"{first + offset:09d}"
                suffix = Path(img.file_name).suffix.lower().lstrip(".")
                if suffix not in IMAGE_EXTENSIONS:
                    raise DatasetError(f"{img.file_name}: shards hold {', '.join(IMAGE_EXTENSIONS)} images")
                try:
                    data = (image_dir / img.file_name).read_bytes()
                except OSError as exc:
                    raise DatasetError(f"{image_dir / img.file_name}: {exc.strerror or exc}") from None
                meta = {"key": key, "file_name": img.file_name, "captions": list(img.captions)}
                meta.update({k: getattr(img, k) for k in ("id", "width", "height") if getattr(img, k) is not None})
                members = [(f"{key}.{suffix}", data), (f"{key}.txt", img.captions[0].encode()),
                           (f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())]
                for name, payload in members:
                    tar.addfile(_tar_info(name, len(payload)), io.BytesIO(payload))
        payload = buffer.getvalue()
        name = f"{prefix}-{number:05d}.tar"
        digest = hashlib.sha256(payload).hexdigest()
        path = out / name
        if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest):
            atomic_write(path, lambda tmp, payload=payload: Path(tmp).write_bytes(payload))
        entries.append({"name": name, "samples": len(chunk), "sha256": digest})
    atomic_write_text(out / MANIFEST, json.dumps({"shards": entries, "samples": len(images)}, indent=1) + "\n")
    return entries


def find_shards(source: str | os.PathLike) -> list[Path]:
    """The ``.tar`` files of a shard folder (sorted), or of a glob pattern, or one ``.tar`` file."""
    path = Path(source)
    if path.is_dir():
        found = sorted(path.glob("*.tar"))
    elif any(c in str(source) for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(source)))
    else:
        found = [path] if path.is_file() else []
    if not found:
        raise DatasetError(f"{source}: no .tar shards found")
    return found


def shard_sizes(shards: Sequence[Path]) -> list[int]:
    """Samples per shard: from ``shards.json`` when every shard is listed there, else by reading the tars."""
    manifest = shards[0].parent / MANIFEST
    if manifest.is_file():
        listed = {e["name"]: int(e["samples"]) for e in loads_json(manifest.read_text(encoding="utf-8")).get("shards", [])}
        if all(s.name in listed for s in shards):
            return [listed[s.name] for s in shards]
    return [sum(1 for _ in iter_samples(s, decode=False)) for s in shards]


def iter_samples(path: Path, *, decode: bool = True) -> Iterator[Sample | str]:
    """The samples of one tar shard in file order (``decode=False``: only their keys). Members are grouped
    by key as the ``webdataset`` package does; a sample without an image, or with neither ``.json``
    captions nor ``.txt``, is skipped. Only regular files are read (links and folders are ignored)."""
    try:
        with tarfile.open(path, mode="r|") as tar:  # streaming mode: one pass, no seeking
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                stem, _, ext = base.partition(".")
                if stem != key:
                    if key is not None:
                        sample = _sample(key, parts, decode)
                        if sample is not None:
                            yield sample
                    key, parts = stem, {}
                handle = tar.extractfile(member)
                parts[ext.lower()] = handle.read() if handle is not None and (decode or ext.lower() in IMAGE_EXTENSIONS) else b""
            if key is not None:
                sample = _sample(key, parts, decode)
                if sample is not None:
                    yield sample
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: unreadable tar shard ({exc})") from None


def _sample(key: str, parts: dict[str, bytes], decode: bool) -> Sample | str | None:
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    if image is None or not ("json" in parts or "txt" in parts):
        return None
    if not decode:
        return key
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            loaded = loads_json(parts["json"].decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            loaded = None
        meta = loaded if isinstance(loaded, dict) else {}
    captions = meta.get("captions")
    if not (isinstance(captions, list) and captions and all(isinstance(c, str) for c in captions)):
        text = parts.get("txt", b"").decode("utf-8", errors="replace").strip()
        if not text:
            return None
        captions = [text]
    return Sample(key, image, tuple(captions), meta)


class ShardStream:
    """An endless, seeded, buffer-shuffled stream of one rank's samples (module docstring).

    Args:
        shards: the tar files (all ranks must pass the same list).
        seed: shard order and shuffle buffer seed.
        rank, world_size: this process's part of the data.
        buffer: shuffle buffer size in samples (1: no shuffling).
    """

    def __init__(self, shards: Sequence[Path], *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 buffer: int = 1000) -> None:
        self.shards, self.seed, self.rank, self.world_size = list(shards), seed, rank, world_size
        self.buffer = max(1, buffer)
        self.by_shard = len(self.shards) >= world_size

    def _epoch(self, epoch: int) -> Iterator[Sample]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        if self.by_shard:
            for index in order[self.rank :: self.world_size]:
                yield from iter_samples(self.shards[index])  # type: ignore[misc]
        else:  # fewer shards than ranks: every rank reads every shard and keeps every N-th sample
            count = 0
            for index in order:
                for sample in iter_samples(self.shards[index]):
                    if count % self.world_size == self.rank:
                        yield sample  # type: ignore[misc]
                    count += 1

    def samples(self, *, skip: int = 0) -> Iterator[Sample]:
        """The stream, after its first ``skip`` samples (read from the tars but never decoded as images)."""
        epoch, emitted = 0, 0
        while True:
            rng = np.random.default_rng([self.seed, 7_919, self.rank, self.world_size, epoch])
            pool: list[Sample] = []
            produced = False
            for item in self._epoch(epoch):
                produced = True
                pool.append(item)
                if len(pool) >= self.buffer:
                    pick = pool.pop(int(rng.integers(len(pool))))
                    if emitted >= skip:
                        yield pick
                    emitted += 1
            while pool:
                pick = pool.pop(int(rng.integers(len(pool))))
                if emitted >= skip:
                    yield pick
                emitted += 1
            if not produced:
                raise DatasetError("this rank's part of the shards holds no samples")
            epoch += 1
