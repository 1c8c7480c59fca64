"""EmojiWorld rendering speed: scenes per second per core, and milliseconds per scene.

Usage::

    python benchmarks/bench_world_render.py [--scenes 200] [--sizes 320 640] [--processes 1 2] [--split test]

Each row renders ``--scenes`` scenes (indices 0..N-1, seed 0) after loading the assets and warming
up; ``+png`` also encodes every scene as PNG the way ``world build`` writes it. With P processes the
scenes are shared out and the wall time is measured across all of them.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from concurrent.futures import ProcessPoolExecutor

from regionprompt.world.build import PNG_COMPRESS_LEVEL
from regionprompt.world.render import SceneRenderer
from regionprompt.world.scene import SceneConfig

_RENDERER: dict[int, SceneRenderer] = {}


def _renderer(size: int) -> SceneRenderer:
    if size not in _RENDERER:
        _RENDERER[size] = SceneRenderer.default(SceneConfig(size=size))
        _RENDERER[size].render("test", 10_000_000, seed=0)  # load assets, warm caches outside the timing
    return _RENDERER[size]


def _work(job: tuple[int, str, list[int], bool]) -> tuple[float, int]:
    """Render (and optionally PNG-encode) the given indices; returns (seconds, objects rendered)."""
    size, split, indices, encode = job
    renderer = _renderer(size)
    start = time.perf_counter()
    objects = 0
    for index in indices:
        scene = renderer.render(split, index, seed=0)
        objects += len(scene.objects)
        if encode:
            scene.image.save(io.BytesIO(), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return time.perf_counter() - start, objects


def _warm(size: int) -> None:
    _renderer(size)


def run(size: int, processes: int, scenes: int, split: str, encode: bool) -> tuple[float, int]:
    """Wall seconds and objects for ``scenes`` scenes at ``size`` px on ``processes`` processes."""
    if processes == 1:
        return _work((size, split, list(range(scenes)), encode))
    chunks = [list(range(p, scenes, processes)) for p in range(processes)]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        list(pool.map(_warm, [size] * processes))
        start = time.perf_counter()
        results = list(pool.map(_work, [(size, split, chunk, encode) for chunk in chunks]))
        return time.perf_counter() - start, sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    print(f"EmojiWorld render benchmark: {args.scenes} scenes per row, split {args.split}, {os.cpu_count()} CPUs")
    print(f"| {'canvas':>6} | {'procs':>5} | {'work':>10} | {'objects/scene':>13} | {'scenes/s':>8} | {'scenes/s/core':>13} | {'ms/scene/core':>13} |")
    print(f"|{'-' * 8}|{'-' * 7}|{'-' * 12}|{'-' * 15}|{'-' * 10}|{'-' * 15}|{'-' * 15}|")
    for size in args.sizes:
        for processes in args.processes:
            for encode in (False, True):
                seconds, objects = run(size, processes, args.scenes, args.split, encode)
                rate = args.scenes / seconds
                work = "render+png" if encode else "render"
                print(
                    f"| {size:>6} | {processes:>5} | {work:>10} | {objects / args.scenes:>13.1f} | {rate:>8.1f} |"
                    f" {rate / processes:>13.1f} | {1000 * processes / rate:>13.1f} |"
                )


if __name__ == "__main__":
    main()
