"""Frames per second of the procedural scene generator, per family, at full size on one CPU core.

Run: ``python benchmarks/bench_synthetic.py [--frames N] [--families indoor outdoor]``.

A benchmark, not a test: the figure depends on the machine. Threads are limited to one before numpy
is imported and the process is pinned to a single core where the OS allows, so the number is the
single-core rate the demo profile's data preparation can count on (aim: >= 3 indoor frames/s).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402


def bench(family: str, frames: int, seed: int = 0) -> dict:
    """Render ``frames`` full-size frames (after one warm-up frame); return timing statistics."""
    from clipdepth.data.synthetic import FULL_SIZE, render

    render(family, seed, 10_000)  # warm-up: imports, allocator, caches
    times = []
    for i in range(frames):
        t0 = time.perf_counter()
        render(family, seed, i)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {
        "family": family,
        "size": FULL_SIZE[family],
        "frames": frames,
        "fps": frames / total,
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--families", nargs="+", default=["indoor", "outdoor"])
    args = parser.parse_args(argv)
    pinned = "no"
    if hasattr(os, "sched_setaffinity"):
        try:
            core = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {core})
            pinned = f"core {core}"
        except OSError:
            pass
    print(f"synthetic scene generator, one thread, pinned: {pinned}")
    for family in args.families:
        r = bench(family, args.frames)
        h, w = r["size"]
        print(
            f"{family:8s} {h}x{w}: {r['fps']:.2f} frames/s over {r['frames']} frames "
            f"(median {r['median_ms']:.0f} ms, max {r['max_ms']:.0f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
