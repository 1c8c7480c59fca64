"""A pre-rendered, resizable, resumable on-disk cache of EmojiWorld scenes for training.

Training reads every scene many times (epochs), and rendering costs more than a small model's
forward pass on our CPUs, so scenes are rendered once (in parallel) into a uint8 memory map:

* ``images.npy`` -- ``(N, S, S, 3)`` uint8, scenes resized from the canvas to ``S`` pixels;
* ``records.jsonl`` -- one JSON line per scene, in index order: ``captions``, and ``objects`` (every
  placed object, labelled or not: ``concept_id``, ``box`` xyxy in pixels of the *resized* image,
  ``labelled``);
* ``spec.json`` -- what was rendered (split, seed, count, size, canvas).

Rendering appends chunks and records progress in ``records.jsonl`` only after the pixels are
flushed, so a killed build resumes at the first missing scene; no scene is lost or duplicated.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from regionprompt.errors import DatasetError
from regionprompt.logging_utils import get_logger, progress
from regionprompt.world.scene import WORLD_VERSION

_log = get_logger("train.cache")
CHUNK = 64


@dataclass(frozen=True)
class SceneCacheSpec:
    """Which scenes a cache holds.

    Attributes:
        split: EmojiWorld split (``pretrain``, ``det-train``, ``val``, ``test``).
        seed: world seed.
        num_images: scenes ``0 .. num_images - 1``.
        size: side of the stored (resized) images in pixels.
        canvas: side of the rendered canvas in pixels (the world's scene size).
        world_version: EmojiWorld rendering version; a cache of another version is not reused.
        layout: ``"scene"`` (the world's scenes) or ``"iconic"`` (1-3 large objects per image, like the
            object-centred photos that dominate web image-text data: see :data:`LAYOUTS`).
    """

    split: str
    seed: int
    num_images: int
    size: int
    canvas: int = 320
    world_version: str = WORLD_VERSION
    layout: str = "scene"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise DatasetError(f"scene cache layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    def scene_config(self) -> Any:
        from regionprompt.world.scene import SceneConfig

        return SceneConfig(size=self.canvas, **LAYOUTS[self.layout])


# SceneConfig overrides per layout. "iconic": objects fill 30-75 % of the canvas side, so they stay
# recognisable when the image is stored small (64 px), which makes caption pretraining far cheaper.
LAYOUTS: dict[str, dict[str, Any]] = {
    "scene": {},
    "iconic": {"min_objects": 1, "max_objects": 3, "min_object_size": 96, "max_object_frac": 0.75, "max_clutter": 2},
}


def _render_chunk(args: tuple[SceneCacheSpec, int, int]) -> tuple[int, np.ndarray, list[dict[str, Any]]]:
    spec, start, stop = args
    renderer = _worker_renderer(spec.scene_config())
    scale = spec.size / spec.canvas
    pixels = np.empty((stop - start, spec.size, spec.size, 3), dtype=np.uint8)
    records = []
    for offset, index in enumerate(range(start, stop)):
        scene = renderer.render(spec.split, index, spec.seed)
        image = scene.image if spec.size == spec.canvas else scene.image.resize((spec.size, spec.size), Image.BILINEAR)
        pixels[offset] = np.asarray(image, dtype=np.uint8)
        records.append(
            {
                "index": index,
                "captions": [c.text for c in scene.captions],
                "objects": [
                    {
                        "concept_id": o.concept_id,
                        "box": [round(v * scale, 3) for v in o.box_xyxy],
                        "labelled": o.labelled,
                    }
                    for o in scene.objects
                ],
            }
        )
    return start, pixels, records


_RENDERER: Any = None


def _worker_renderer(config: Any) -> Any:
    global _RENDERER
    if _RENDERER is None or _RENDERER.config != config:
        from regionprompt.world.render import SceneRenderer

        _RENDERER = SceneRenderer.default(config)
    return _RENDERER


class SceneCache:
    """Read access to a built cache; see :func:`build_scene_cache`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.spec = SceneCacheSpec(**json.loads((self.directory / "spec.json").read_text()))
            self.images: np.ndarray = np.load(self.directory / "images.npy", mmap_mode="r")
            self.records = [json.loads(line) for line in (self.directory / "records.jsonl").read_text().splitlines() if line]
        except (OSError, ValueError, TypeError) as exc:
            raise DatasetError(f"{self.directory}: not a complete scene cache ({exc})") from None
        if len(self.records) != self.spec.num_images:
            raise DatasetError(f"{self.directory}: scene cache is incomplete ({len(self.records)}/{self.spec.num_images})")

    def __len__(self) -> int:
        return self.spec.num_images

    def image(self, index: int) -> np.ndarray:
        """``(S, S, 3)`` uint8."""
        return self.images[index]

    def labelled_targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Labelled objects of scene ``index``: boxes ``(N, 4)`` float32 xyxy pixels and concept ids ``(N,)`` int64."""
        objects = [o for o in self.records[index]["objects"] if o["labelled"]]
        boxes = np.asarray([o["box"] for o in objects], dtype=np.float32).reshape(-1, 4)
        return boxes, np.asarray([o["concept_id"] for o in objects], dtype=np.int64)


def _existing_records(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # A line cut by a crash is not valid JSON: drop it and everything after it.
    good = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            break
        good.append(line)
    return good


def build_scene_cache(spec: SceneCacheSpec, directory: str | Path, *, workers: int = 2) -> SceneCache:
    """Render (or finish rendering) the scenes of ``spec`` into ``directory`` and open the cache.

    An existing cache with the same spec is resumed; one with a different spec is an error (delete
    the folder or choose another).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec_path, images_path, records_path = directory / "spec.json", directory / "images.npy", directory / "records.jsonl"
    if spec_path.exists():
        existing = json.loads(spec_path.read_text())
        # Older caches predate some fields: compare through the dataclass so their defaults apply.
        if SceneCacheSpec(**existing) != spec:
            raise DatasetError(f"{directory} holds a scene cache for {existing}, not {asdict(spec)}")
    else:
        spec_path.write_text(json.dumps(asdict(spec), sort_keys=True))
    shape = (spec.num_images, spec.size, spec.size, 3)
    if images_path.exists():
        images = np.lib.format.open_memmap(images_path, mode="r+")
        if images.shape != shape:
            raise DatasetError(f"{images_path}: shape {images.shape} does not match {shape}")
    else:
        images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)
    lines = _existing_records(records_path)
    records_path.write_text("".join(line + "\n" for line in lines))
    done = len(lines)
    if done < spec.num_images:
        _log.info("rendering %d %s scenes at %d px into %s (%d already done)", spec.num_images - done, spec.split, spec.size, directory, done)
        chunks = [(spec, s, min(s + CHUNK, spec.num_images)) for s in range(done, spec.num_images, CHUNK)]
        with records_path.open("a") as out:
            for start, pixels, records in progress(
                _ordered(chunks, workers), desc=f"render {spec.split}", total=len(chunks), unit="chunk"
            ):
                images[start : start + len(pixels)] = pixels
                images.flush()
                out.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
                out.flush()
    del images
    return SceneCache(directory)


def _ordered(chunks: list[tuple[SceneCacheSpec, int, int]], workers: int) -> Iterator[tuple[int, np.ndarray, list]]:
    """Render chunks in parallel but yield them in index order (records must stay contiguous)."""
    if workers <= 1:
        yield from map(_render_chunk, chunks)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_render_chunk, chunks)
