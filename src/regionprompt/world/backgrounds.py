"""Scene backgrounds: solid, gradient, noise and textures (stripes, checker, blobs).

Every background is drawn from named colours so that a caption can mention it truthfully
("on a plain blue background"). Colours are jittered only slightly around the named value, so the
name stays right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "noise", "stripes", "checker", "blobs")

# Named colours (RGB). Kept distinct enough that a small jitter never makes the name wrong.
NAMED_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (245, 245, 245)),
    ("black", (20, 20, 20)),
    ("gray", (128, 128, 128)),
    ("light gray", (200, 200, 200)),
    ("red", (200, 40, 40)),
    ("orange", (240, 140, 30)),
    ("yellow", (240, 220, 60)),
    ("green", (60, 160, 70)),
    ("dark green", (20, 80, 40)),
    ("blue", (50, 90, 200)),
    ("light blue", (150, 200, 240)),
    ("navy", (20, 30, 90)),
    ("purple", (120, 60, 160)),
    ("pink", (240, 160, 190)),
    ("brown", (120, 80, 40)),
    ("beige", (225, 210, 170)),
    ("teal", (30, 140, 140)),
)

_JITTER = 12


@dataclass(frozen=True)
class Background:
    """A rendered background.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB array.
        kind: one of :data:`BACKGROUND_KINDS`.
        colors: the colour names it was drawn from (1 or 2).
        phrase: a noun phrase for captions, e.g. ``"a plain blue background"``.
    """

    image: np.ndarray
    kind: str
    colors: tuple[str, ...]
    phrase: str


def _pick_colors(rng: np.random.Generator, count: int) -> tuple[list[str], np.ndarray]:
    picks = rng.choice(len(NAMED_COLORS), size=count, replace=False)
    names = [NAMED_COLORS[i][0] for i in picks]
    base = np.array([NAMED_COLORS[i][1] for i in picks], dtype=np.float32)
    jitter = rng.integers(-_JITTER, _JITTER + 1, size=base.shape).astype(np.float32)
    return names, np.clip(base + jitter, 0, 255)


def _blend(field: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Mix two colours per pixel by ``field`` in [0, 1] (H, W) -> (H, W, 3) uint8."""
    # A 256-entry colour table indexed by the quantised field is ~5x faster than per-pixel float maths.
    steps = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    table = np.clip(c1[None, :] * (1.0 - steps) + c2[None, :] * steps + 0.5, 0, 255).astype(np.uint8)
    index = (np.clip(field, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return table[index]


def _coords(size: int, rng: np.random.Generator) -> np.ndarray:
    """Pixel coordinate projected on a random direction, shape (H, W)."""
    angle = rng.uniform(0.0, np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))


def _solid(rng: np.random.Generator, size: int) -> Background:
    names, colors = _pick_colors(rng, 1)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = np.clip(colors[0] + 0.5, 0, 255).astype(np.uint8)
    return Background(image, "solid", tuple(names), f"a plain {names[0]} background")


def _gradient(rng: np.random.Generator, size: int) -> Background:
    names, colors = _pick_colors(rng, 2)
    proj = _coords(size, rng)
    field = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    return Background(_blend(field, colors[0], colors[1]), "gradient", tuple(names),
                      f"a {names[0]} to {names[1]} gradient background")


def _noise(rng: np.random.Generator, size: int) -> Background:
    names, colors = _pick_colors(rng, 2)
    cells = int(rng.integers(3, 10))
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    # Bicubic upsampling of a coarse grid gives smooth "cloudy" noise at negligible cost.
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    grain = rng.normal(0.0, 0.04, size=(size, size)).astype(np.float32)
    field = np.clip(smooth + grain, 0.0, 1.0)
    return Background(_blend(field, colors[0], colors[1]), "noise", tuple(names),
                      f"a mottled {names[0]} and {names[1]} background")


def _stripes(rng: np.random.Generator, size: int) -> Background:
    names, colors = _pick_colors(rng, 2)
    period = float(rng.uniform(8, max(9, size / 8)))
    field = ((_coords(size, rng) % period) < period / 2).astype(np.float32)
    return Background(_blend(field, colors[0], colors[1]), "stripes", tuple(names),
                      f"a {names[0]} and {names[1]} striped background")


def _checker(rng: np.random.Generator, size: int) -> Background:
    names, colors = _pick_colors(rng, 2)
    cell = int(rng.integers(8, max(9, size // 8)))
    ys, xs = np.mgrid[0:size, 0:size]
    field = (((xs // cell) + (ys // cell)) % 2).astype(np.float32)
    return Background(_blend(field, colors[0], colors[1]), "checker", tuple(names),
                      f"a {names[0]} and {names[1]} checkered background")


def _blobs(rng: np.random.Generator, size: int) -> Background:
    names, colors = _pick_colors(rng, 2)
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in colors[0]))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 12))):
        cx, cy = rng.uniform(0, size, size=2)
        rx, ry = rng.uniform(size / 16, size / 4, size=2)
        shade = np.clip(colors[1] + rng.integers(-_JITTER, _JITTER + 1, size=3), 0, 255)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(c) for c in shade))
    # Blurred edges keep blobs from looking like labelled objects.
    canvas = canvas.filter(ImageFilter.BoxBlur(max(2, size // 40)))
    return Background(np.asarray(canvas, dtype=np.uint8).copy(), "blobs", tuple(names),
                      f"a blotchy {names[0]} and {names[1]} background")


_MAKERS = {
    "solid": _solid,
    "gradient": _gradient,
    "noise": _noise,
    "stripes": _stripes,
    "checker": _checker,
    "blobs": _blobs,
}


def render_background(rng: np.random.Generator, size: int, kind: str | None = None) -> Background:
    """Draw a ``size x size`` background; ``kind`` is random (uniform over kinds) when ``None``."""
    if kind is None:
        kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    return _MAKERS[kind](rng, size)
