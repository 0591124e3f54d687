"""Depth-bin centres: the fixed depths that bin probabilities are averaged over.

The authors use bin *midpoints* of an even or log-even partition of [min, max] (so neither end is a
centre); DepthCLIP uses a hand-picked list. Kinds: ``even``, ``log``, ``const80-log`` (log-even over
a fixed [min, 80] whatever the dataset), ``depthclip``, or an explicit sequence of depths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEPTHCLIP_BINS: tuple[float, ...] = (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)
BIN_KINDS: tuple[str, ...] = ("even", "log", "const80-log", "depthclip")


def bin_centres(
    kind: str | Sequence[float], n: int, min_depth: float = 1e-3, max_depth: float = 10.0
) -> torch.Tensor:
    """Return ``n`` bin centres in metres (float64 for exactness, cast by the caller).

    ``even``: c_i = min + (i + 1/2) (max - min) / n. ``log``: the same in ln-space.
    NYU even-7 (min 0.001, max 10) gives 0.7152 ... 9.2858.
    """
    if not isinstance(kind, str):
        values = torch.tensor([float(v) for v in kind], dtype=torch.float64)
        if values.numel() != n:
            raise ValueError(f"explicit bin list has {values.numel()} entries but n={n}")
        return values
    if n <= 0:
        raise ValueError(f"number of bins must be positive, got {n}")
    if kind == "depthclip":
        if n != len(DEPTHCLIP_BINS):
            raise ValueError(f"the depthclip bins are {len(DEPTHCLIP_BINS)} fixed depths, not {n}")
        return torch.tensor(DEPTHCLIP_BINS, dtype=torch.float64)
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    i = torch.arange(n, dtype=torch.float64) + 0.5
    if kind == "even":
        return min_depth + i * (max_depth - min_depth) / n
    if kind in ("log", "const80-log"):
        top = 80.0 if kind == "const80-log" else max_depth
        lo, hi = math.log(min_depth), math.log(top)
        return torch.exp(lo + i * (hi - lo) / n)
    raise ValueError(f"unknown bin kind {kind!r}; valid: {', '.join(BIN_KINDS)} or a list of depths")
