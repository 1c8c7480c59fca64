"""Distractor clutter: unlabelled lines, outlines and irregular polygons drawn under the objects.

Clutter teaches a detector that not every salient shape is an object. Shapes are kept unlike the
emoji symbols in the concept list (no filled circles or squares, which exist as emoji).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

CLUTTER_SHAPES: tuple[str, ...] = ("line", "polyline", "ring", "frame", "polygon")


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def draw_clutter(canvas: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Draw ``count`` random distractor shapes onto the RGB ``canvas`` in place."""
    size = min(canvas.size)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        shape = CLUTTER_SHAPES[int(rng.integers(len(CLUTTER_SHAPES)))]
        extent = float(rng.uniform(size / 40, size / 5))
        cx, cy = rng.uniform(0, size, size=2)
        width = int(rng.integers(1, 4))
        color = _color(rng)
        if shape == "line":
            angle = rng.uniform(0, math.pi)
            dx, dy = extent * math.cos(angle), extent * math.sin(angle)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=color, width=width)
        elif shape == "polyline":
            points = [(float(x), float(y)) for x, y in rng.normal((cx, cy), extent / 2, size=(int(rng.integers(3, 6)), 2))]
            draw.line(points, fill=color, width=width)
        elif shape == "ring":
            rx, ry = extent / 2, extent / 2 * float(rng.uniform(0.5, 1.0))
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=color, width=width)
        elif shape == "frame":
            hw, hh = extent / 2, extent / 2 * float(rng.uniform(0.4, 1.0))
            draw.rectangle((cx - hw, cy - hh, cx + hw, cy + hh), outline=color, width=width)
        else:
            # Irregular star-shaped polygon: jittered radii at sorted angles never self-intersect.
            vertices = int(rng.integers(5, 9))
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=vertices))
            radii = rng.uniform(0.3, 1.0, size=vertices) * extent / 2
            points = [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a))) for a, r in zip(angles, radii)]
            draw.polygon(points, fill=color)
