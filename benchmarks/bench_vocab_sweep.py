"""Prompts per second of the vocabulary sweep (nearest-neighbour analysis, paper Table 8).

Run: ``python benchmarks/bench_vocab_sweep.py [--tokens N | --full] [--threads 1 2] [--device cpu]``.

A benchmark, not a test: the figure depends on the machine and on what else runs on it. Every
vocabulary prompt has the same length (template + one token + EOT), so the cost per prompt is the same
for every token and a slice of N tokens extrapolates linearly to the full 49,408 (``--full`` runs
them all). The random-init RN50 is used: the cost does not depend on the weight values. The shared-
prefix shortcut (default) is compared with the plain truncated tower on a smaller slice, and each
thread count is measured separately, because on a shared CPU fewer threads can be faster.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from clipdepth.model.backbone import load_clip, weights_id
from clipdepth.study import neighbours as nb

ARCH = "RN50-quickgelu"


def bench(model, tokens: int | None, threads: int | None, prefix_cache: bool, batch_size: int) -> dict:
    """One uncached sweep of the first ``tokens`` ids (all when None); return its timing."""
    nb.encode_fillings(model, nb.prompt_layout(model), model.token_embedding.weight[:8][:, None])  # warm-up
    t0 = time.perf_counter()
    sweep = nb.vocab_sweep(model, weights_id(None, 0), ARCH, vocab_limit=tokens, cache_dir=None,
                           batch_size=batch_size, progress=False, prefix_cache=prefix_cache, threads=threads)
    wall = time.perf_counter() - t0
    return {"tokens": len(sweep), "threads": sweep.info["threads"], "prefix_cache": sweep.info["prefix_cache"],
            "seconds": sweep.seconds, "wall": wall, "prompts_per_s": sweep.prompts_per_s,
            "full_vocab_s": nb.VOCAB_SIZE / sweep.prompts_per_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="slice of the vocabulary to time")
    parser.add_argument("--full", action="store_true", help="sweep all 49,408 tokens (prefix shortcut only)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--plain-tokens", type=int, default=1024,
                        help="slice for the plain (no shared prefix) comparison; 0 skips it")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model = load_clip(ARCH, weights=None, seed=0, device=args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"vocabulary sweep, {ARCH} random init, device {args.device}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")
    tokens = None if args.full else args.tokens
    rows = []
    for threads in args.threads:
        rows.append(bench(model, tokens, threads, True, args.batch_size))
        if args.plain_tokens:
            rows.append(bench(model, args.plain_tokens, threads, False, args.batch_size))
    for r in rows:
        kind = "shared prefix" if r["prefix_cache"] else "plain tower  "
        extrapolated = "measured" if r["tokens"] == nb.VOCAB_SIZE else "extrapolated"
        print(f"  {kind} threads={r['threads']} tokens={r['tokens']:>6}: {r['prompts_per_s']:7.1f} prompts/s, "
              f"{r['seconds']:7.1f} s; full {nb.VOCAB_SIZE:,} vocabulary {r['full_vocab_s']:6.0f} s ({extrapolated})")
    best = max((r for r in rows if r["prefix_cache"]), key=lambda r: r["prompts_per_s"])
    print(f"best: {best['prompts_per_s']:.1f} prompts/s (threads={best['threads']}), "
          f"full sweep {best['full_vocab_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
