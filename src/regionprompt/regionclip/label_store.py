"""On-disk pseudo labels: a documented, sharded, append-only store that survives being killed.

Layout of a pseudo-label folder::

    meta.json         {"identity": {...}, "info": {...}}. ``identity`` is everything the labels depend on
                      (teacher weights hash, pool hash, templates, threshold, temperature, top-k, proposal
                      source, sizes, scene-cache spec); a rerun with a different identity is refused.
                      ``info`` is informational (paths, package version) and never compared.
    pool.json         {"names": [...], "sha256": ..., "source": ...}: the concept pool; ``concept`` and
                      ``topk_index`` below index ``names``.
    shards/shard_NNNNN.safetensors
                      the regions kept for the images ``[first_image, stop_image)`` of the scene cache:
                        image_index (R,)   int64    cache index of each region's image (ascending)
                        boxes       (R, 4) float32  xyxy, absolute pixels of the cache image
                        concept     (R,)   int64    the pseudo label: the teacher's best concept
                        topk_index  (R, k) int64    the teacher's k best concepts, best first
                        topk_prob   (R, k) float16  their probabilities (softmax over the whole pool)
                        objectness  (R,)   float32  the proposal source's objectness
                      (safetensors metadata: first_image, stop_image).
    manifest.jsonl    one JSON line per finished shard, in image order:
                      {"shard": "shards/shard_00000.safetensors", "first_image": 0, "stop_image": 256,
                       "regions": R, "proposals": P, "seconds": s, "sha256": "..."}

Sharded jobs (``--shard i/n``) label the blocks of ``shard_images`` images whose number ``k`` has
``k % n == i`` into ``parts/``: ``parts/images_FIRST_STOP.safetensors`` (the same tensors) listed in
``parts/manifest-i-of-n.jsonl`` (lines as above, with ``"shard"`` naming the part file). A run without a
shard first folds the parts into the store (:func:`merge_parts`): while a part starts at the first image
the store lacks, it is linked in as the next ``shards/shard_NNNNN.safetensors``, its line appended to
``manifest.jsonl``, and the part file removed; then it labels whatever is still missing. A part lost to
a kill at any point is either merged once or relabelled, never both.

The manifest is the only record of what is done. A shard is written to a temporary name and renamed,
then its manifest line is appended and fsynced. Killed at any point, a rerun finds either the shard
listed (done) or not (redone, overwriting any unlisted file of the same name), and a manifest line
cut by the kill is dropped. So no shard is ever lost or counted twice, and shard ``k`` always holds
the ``k``-th manifest entry's images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from regionprompt.data.files import atomic_write, atomic_write_text, file_sha256
from regionprompt.errors import DatasetError
from regionprompt.sharding import Shard

FORMAT = "regionprompt-pseudo-labels"
FORMAT_VERSION = 1
META_FILE = "meta.json"
POOL_FILE = "pool.json"
MANIFEST_FILE = "manifest.jsonl"
SHARD_DIR = "shards"
PARTS_DIR = "parts"
TENSORS = ("image_index", "boxes", "concept", "topk_index", "topk_prob", "objectness")
_DTYPES = {"image_index": torch.int64, "boxes": torch.float32, "concept": torch.int64,
           "topk_index": torch.int64, "topk_prob": torch.float16, "objectness": torch.float32}


class PseudoLabelError(DatasetError):
    """A pseudo-label folder is damaged, or belongs to a run with other settings."""


def pool_hash(names: Sequence[str]) -> str:
    """sha256 of the pool's names in order (the order defines the concept ids)."""
    return hashlib.sha256(json.dumps(list(names), ensure_ascii=False).encode()).hexdigest()


def shard_name(number: int) -> str:
    return f"{SHARD_DIR}/shard_{number:05d}.safetensors"


def empty_regions(top_k: int) -> dict[str, torch.Tensor]:
    """The tensors of a shard with no regions (every name of :data:`TENSORS`, right shapes and dtypes)."""
    shapes = {"boxes": (0, 4), "topk_index": (0, top_k), "topk_prob": (0, top_k)}
    return {name: torch.zeros(shapes.get(name, (0,)), dtype=_DTYPES[name]) for name in TENSORS}


def _read_manifest(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Entries of a manifest and whether a damaged tail (a line cut by a kill) was dropped."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    entries = []
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is unfinished (usually empty)
    for line in complete:
        try:
            entries.append(json.loads(line))
        except ValueError:
            return entries, True
    return entries, bool(lines[-1])


def _describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _check_entries(directory: Path, entries: list[dict[str, Any]]) -> None:
    expected_start = 0
    for number, entry in enumerate(entries):
        if entry.get("shard") != shard_name(number) or entry.get("first_image") != expected_start:
            raise PseudoLabelError(f"{directory / MANIFEST_FILE}: entry {number} is out of order ({entry})")
        if not (directory / entry["shard"]).is_file():
            raise PseudoLabelError(f"{directory}: the manifest lists {entry['shard']}, which is missing")
        expected_start = int(entry["stop_image"])


class PseudoLabelWriter:
    """Appends shards to a pseudo-label folder, creating it or resuming it (see the module docstring).

    Args:
        directory: the folder.
        identity: JSON-able settings the labels depend on; must equal the stored ones when resuming.
        info: JSON-able information stored with them (not compared).
        pool_names: the concept pool (its hash must be part of ``identity`` to be checked).
        pool_source: where the pool came from (stored in ``pool.json``).
    """

    def __init__(self, directory: str | Path, identity: Mapping[str, Any], info: Mapping[str, Any],
                 pool_names: Sequence[str], pool_source: str = "") -> None:
        self.directory = Path(directory)
        self.identity = json.loads(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **identity}, sort_keys=True))
        meta_path = self.directory / META_FILE
        if meta_path.exists():
            stored = _read_json(meta_path).get("identity", {})
            if stored != self.identity:
                raise PseudoLabelError(
                    f"{self.directory} holds pseudo labels made with other settings ({_describe_difference(stored, self.identity)}); "
                    "use another --out, or delete the folder to start over"
                )
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            pool = {"names": list(pool_names), "sha256": pool_hash(pool_names), "source": pool_source}
            atomic_write_text(self.directory / POOL_FILE, json.dumps(pool, ensure_ascii=False, indent=1) + "\n")
            # meta.json last: its presence means the folder is initialised.
            meta = {"identity": self.identity, "info": json.loads(json.dumps(dict(info), default=str))}
            atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        (self.directory / SHARD_DIR).mkdir(exist_ok=True)
        manifest = self.directory / MANIFEST_FILE
        self.entries, damaged = _read_manifest(manifest)
        if damaged:
            text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.entries)
            atomic_write_text(manifest, text)
        _check_entries(self.directory, self.entries)
        listed = {self.directory / e["shard"] for e in self.entries}
        for path in (self.directory / SHARD_DIR).iterdir():
            if path not in listed:  # written but never recorded (killed before the manifest line), or a temp file
                path.unlink()

    @property
    def next_image(self) -> int:
        """The first image no shard covers yet."""
        return int(self.entries[-1]["stop_image"]) if self.entries else 0

    def append(self, first_image: int, stop_image: int, tensors: Mapping[str, torch.Tensor],
               stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the shard of images ``[first_image, stop_image)`` and record it; returns its manifest entry."""
        if first_image != self.next_image or stop_image <= first_image:
            raise ValueError(f"shard must start at image {self.next_image}, got [{first_image}, {stop_image})")
        entry = _write_block(self.directory, shard_name(len(self.entries)), first_image, stop_image, tensors, stats)
        _append_line(self.directory / MANIFEST_FILE, entry)
        self.entries.append(entry)
        return entry

    def adopt(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Make the part ``entry`` (a line of a part manifest, starting at :attr:`next_image`) the store's
        next shard: linked (or copied) into place, recorded, then the part file removed."""
        if entry["first_image"] != self.next_image:
            raise ValueError(f"a part must start at image {self.next_image}, got {entry['first_image']}")
        source, name = self.directory / entry["shard"], shard_name(len(self.entries))
        target = self.directory / name
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(source, target)
        adopted = {**entry, "shard": name}
        _append_line(self.directory / MANIFEST_FILE, adopted)
        self.entries.append(adopted)
        source.unlink()
        return adopted


def _write_block(directory: Path, name: str, first_image: int, stop_image: int, tensors: Mapping[str, torch.Tensor],
                 stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check and atomically write the tensors of images ``[first_image, stop_image)`` to ``directory/name``;
    returns the manifest entry."""
    missing = set(TENSORS) - set(tensors)
    if missing:
        raise ValueError(f"shard tensors lack {sorted(missing)}")
    # clone(): safetensors refuses tensors sharing memory (e.g. ``concept`` as a view of ``topk_index``).
    state = {key: tensors[key].detach().to("cpu", _DTYPES[key]).clone() for key in TENSORS}
    index = state["image_index"]
    rows = {int(t.shape[0]) for t in state.values()}
    if len(rows) != 1 or state["boxes"].shape[1:] != (4,) or state["topk_prob"].shape != state["topk_index"].shape:
        raise ValueError(f"shard tensors disagree in shape: { {k: tuple(v.shape) for k, v in state.items()} }")
    if len(index) and (index.min() < first_image or index.max() >= stop_image or (index[1:] < index[:-1]).any()):
        raise ValueError(f"image_index must be ascending within [{first_image}, {stop_image})")
    path = directory / name
    metadata = {"format": FORMAT, "first_image": str(first_image), "stop_image": str(stop_image)}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return {"shard": name, "first_image": first_image, "stop_image": stop_image,
            "regions": int(state["image_index"].shape[0]), **dict(stats or {}), "sha256": file_sha256(path)}


def _append_line(path: Path, entry: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class PartWriter:
    """A shard job's blocks under ``parts/`` (module docstring); ``done`` holds the ``(first_image,
    stop_image)`` of the blocks already written, so a rerun of the job continues where it stopped."""

    def __init__(self, directory: str | Path, shard: Shard) -> None:
        self.directory = Path(directory)
        (self.directory / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        self.manifest = self.directory / PARTS_DIR / f"manifest-{shard.tag}.jsonl"
        entries, damaged = _read_manifest(self.manifest)
        if damaged:
            atomic_write_text(self.manifest, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        self.done = {(e["first_image"], e["stop_image"]) for e in entries if (self.directory / e["shard"]).is_file()}

    def append(self, first_image: int, stop_image: int, tensors: Mapping[str, torch.Tensor],
               stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
        name = f"{PARTS_DIR}/images_{first_image:09d}_{stop_image:09d}.safetensors"
        entry = _write_block(self.directory, name, first_image, stop_image, tensors, stats)
        _append_line(self.manifest, entry)
        self.done.add((first_image, stop_image))
        return entry


def merge_parts(writer: PseudoLabelWriter) -> int:
    """Fold the finished parts of sharded jobs into the store, in image order, as far as they are
    contiguous with it; returns how many were merged. Parts whose file is gone (merged already) are skipped;
    run it only while no shard job of the folder is still writing."""
    starts: dict[int, dict[str, Any]] = {}
    for manifest in sorted((writer.directory / PARTS_DIR).glob("manifest-*.jsonl")):
        for entry in _read_manifest(manifest)[0]:
            if (writer.directory / entry["shard"]).is_file():
                starts.setdefault(int(entry["first_image"]), entry)
    merged = 0
    while writer.next_image in starts:
        writer.adopt(starts.pop(writer.next_image))
        merged += 1
    return merged


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PseudoLabelError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise PseudoLabelError(f"{path}: expected a JSON object")
    return data


class ImageRegions(NamedTuple):
    """The pseudo-labelled regions of one image (see the module docstring for shapes and formats)."""

    boxes: torch.Tensor  # (K, 4) float32 xyxy pixels of the cache image
    concept: torch.Tensor  # (K,) int64 pool index
    topk_index: torch.Tensor  # (K, k) int64
    topk_prob: torch.Tensor  # (K, k) float16


class PseudoLabels:
    """Read access to a pseudo-label folder: every listed shard, loaded once.

    ``len(labels)`` is the number of images covered (``0 .. len - 1`` of the scene cache), whether or
    not they kept any region; :attr:`num_regions` counts the regions.
    """

    def __init__(self, directory: Path, meta: dict[str, Any], pool_names: tuple[str, ...],
                 entries: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
        self.directory = directory
        self.meta = meta
        self.pool_names = pool_names
        self.entries = entries
        self.tensors = tensors
        self.num_images = int(entries[-1]["stop_image"]) if entries else 0
        # offsets[i] .. offsets[i + 1]: rows of image i (image_index is ascending).
        self._offsets = torch.searchsorted(tensors["image_index"], torch.arange(self.num_images + 1))

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = True) -> PseudoLabels:
        """Open a folder written by :func:`~regionprompt.regionclip.pseudo_labels.pseudo_label`.

        ``verify`` checks each shard's sha256 against the manifest.
        """
        directory = Path(directory)
        if not (directory / META_FILE).is_file():
            raise PseudoLabelError(f"{directory}: not a pseudo-label folder (no {META_FILE})")
        meta = _read_json(directory / META_FILE)
        if meta.get("identity", {}).get("format") != FORMAT:
            raise PseudoLabelError(f"{directory / META_FILE}: not a {FORMAT} folder")
        pool = _read_json(directory / POOL_FILE)
        names = tuple(pool.get("names", ()))
        if pool_hash(names) != meta["identity"].get("pool_hash", pool_hash(names)):
            raise PseudoLabelError(f"{directory / POOL_FILE} does not match the pool hash in {META_FILE}")
        entries, _ = _read_manifest(directory / MANIFEST_FILE)
        _check_entries(directory, entries)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in TENSORS}
        for entry in entries:
            path = directory / entry["shard"]
            if verify and file_sha256(path) != entry["sha256"]:
                raise PseudoLabelError(f"{path}: contents do not match the manifest's sha256")
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for name in TENSORS:
                        parts[name].append(handle.get_tensor(name))
            except (SafetensorError, OSError) as exc:
                raise PseudoLabelError(f"{path}: unreadable shard ({exc})") from None
        top_k = int(meta["identity"].get("top_k", 1))
        tensors = {name: torch.cat(chunks) if chunks else empty_regions(top_k)[name] for name, chunks in parts.items()}
        return cls(directory, meta, names, entries, tensors)

    def __len__(self) -> int:
        return self.num_images

    @property
    def num_regions(self) -> int:
        return int(self.tensors["image_index"].shape[0])

    def _rows(self, image_index: int) -> slice:
        if not 0 <= image_index < self.num_images:
            raise IndexError(f"image {image_index} is not covered by {self.directory} ({self.num_images} images)")
        return slice(int(self._offsets[image_index]), int(self._offsets[image_index + 1]))

    def regions(self, image_index: int) -> ImageRegions:
        """The pseudo-labelled regions of cache image ``image_index`` (possibly none)."""
        rows = self._rows(image_index)
        t = self.tensors
        return ImageRegions(t["boxes"][rows], t["concept"][rows], t["topk_index"][rows], t["topk_prob"][rows])

    def objectness(self, image_index: int) -> torch.Tensor:
        """``(K,)`` float32 proposal objectness of the regions of image ``image_index``."""
        return self.tensors["objectness"][self._rows(image_index)]
