"""The study's words, defined once: datasets, templates, word sets, bin kinds, architectures, weights.

Why a module: the registry, the prompt learner, the parameter checker, the scorer and the console
all validate the same names; when each kept its own copy they drifted (a template added in one place
but not another, three rules for "is this weights value a file?"). Everything imports them from here.
It imports neither torch nor open_clip, so checking a parameter or listing the registry stays
instant. The cache folder's one variable, ``$CLIPDEPTH_CACHE_DIR``, is named here too
(:func:`cache_dir`). In the subpackage layout it is a top-level module: every job reads it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

__all__ = ["ARCHS", "BIN_KINDS", "CHECKPOINT_SUFFIXES", "DATASETS", "DATASET_RANGES", "Dataset", "DepthWords",
           "TEMPLATES", "TEMPLATE_CONTEXT_TOKENS", "VECTOR_SETS", "WORD_LISTS", "cache_dir", "is_weights_file",
           "parse_depth_words"]

Dataset = Literal["nyu", "kitti"]
DATASETS: tuple[str, ...] = get_args(Dataset)

#: Evaluation/bin range per dataset, metres ([PAPER] section 4.2; configs' min_depth/max_depth).
DATASET_RANGES: dict[str, tuple[float, float]] = {"nyu": (0.001, 10.0), "kitti": (0.001, 80.0)}

#: Prompt templates. ``baseline`` is the authors' (their code has no trailing period), ``depthclip``
#: DepthCLIP's; ``xoyd`` = x learned context tokens, "object", y learned tokens, then the depth token.
#: Each ``{ctx}`` is its own learnable context token, shared by all bin prompts (paper section 3.3).
TEMPLATES: dict[str, str] = {
    "baseline": "This {object} appears to be {depth}",
    "depthclip": "This {object} is {depth}",
    "1o1d": "{ctx} {object} {ctx} {depth}",
    "1o2d": "{ctx} {object} {ctx} {ctx} {depth}",
    "4o4d": "{ctx} {ctx} {ctx} {ctx} {object} {ctx} {ctx} {ctx} {ctx} {depth}",
}

#: Learnable context tokens each template adds, counted from the template itself.
TEMPLATE_CONTEXT_TOKENS: dict[str, int] = {name: text.count("{ctx}") for name, text in TEMPLATES.items()}

#: Word sets that fill the depth slot with words, bin 0 (nearest) to bin N-1 (farthest); exact strings
#: of the paper's Table 2 / the authors' code and of DepthCLIP's monoclip.py.
WORD_LISTS: dict[str, tuple[str, ...]] = {
    "depth-7": ("very close", "close", "slightly close", "neither close nor distant", "slightly distant",
                "distant", "very distant"),
    "size-7": ("very small", "small", "slightly small", "neither small nor large", "slightly large",
               "large", "very large"),
    "colour-7": ("very red", "red", "slightly red", "neither red nor green", "slightly green", "green",
                 "very green"),
    "rand-txt-7": ("summer", "inian", "fellow", "greg", "bis", "ksh", "aidan"),
    "depthclip-7": ("giant", "extremely close", "close", "not in distance", "a little remote", "far",
                    "unseen"),
}
#: Vector word sets, used as ``random-N`` (frozen random vectors) and ``learned-N`` (learnable), N >= 1.
VECTOR_SETS: tuple[str, ...] = ("random", "learned")


@dataclass(frozen=True)
class DepthWords:
    """What fills the depth slot: fixed words, frozen random vectors or learnable vectors."""

    kind: str  # "words" | "random" | "learned"
    n: int
    words: tuple[str, ...] = ()


def parse_depth_words(name: str) -> DepthWords:
    """Resolve a word-set name (``depth-7``, ``random-7``, ``learned-256``, ...; N without leading zeros)."""
    if name in WORD_LISTS:
        return DepthWords("words", len(WORD_LISTS[name]), WORD_LISTS[name])
    kind, _, count = name.rpartition("-")
    if kind in VECTOR_SETS and count.isascii() and count.isdigit() and count[0] != "0":
        return DepthWords(kind, int(count))
    valid = ", ".join([*WORD_LISTS, "random-N", "learned-N"])
    raise ValueError(f"unknown word set {name!r}; valid: {valid}")


#: Bin-centre kinds: uniform or log-uniform midpoints over [min, max]; ``const80-log`` is log-uniform
#: over a fixed [min, 80] m whatever the dataset (for KITTI it equals ``log``); ``depthclip`` is
#: DepthCLIP's fixed list 1.00 1.50 2.00 2.25 2.50 2.75 3.00 m.
BIN_KINDS: tuple[str, ...] = ("even", "log", "const80-log", "depthclip")

#: The open_clip architectures the paper-table rows use and the tests cover end to end (any other
#: ``open_clip.list_models()`` name is accepted where a backbone sweep asks for it).
ARCHS: tuple[str, ...] = ("RN50-quickgelu", "RN101-quickgelu", "ViT-B-32-quickgelu", "ViT-B-16")

#: File name endings that mark a ``weights`` value as a checkpoint path rather than an open_clip tag.
CHECKPOINT_SUFFIXES: frozenset[str] = frozenset({".pt", ".pth", ".bin", ".safetensors", ".ckpt"})


def is_weights_file(value: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> bool:
    """Whether a ``weights`` value names a local file rather than an open_clip pretrained tag.

    A file: a checkpoint suffix, a path separator, a leading ``~`` or ``.``, or an existing file
    (relative paths from ``base``, default the working directory). No open_clip tag has any of these
    (tags are words like ``openai`` or ``laion2b_s34b_b79k``), so a misspelt path is reported as a
    missing file, never looked up as a tag.
    """
    text = str(value)
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return (Path(text).suffix in CHECKPOINT_SUFFIXES or "/" in text or os.sep in text
            or text.startswith(("~", ".")) or path.is_file())


def cache_dir() -> Path:
    """The clipdepth cache folder (split lists in ``splits/``, weights hashes in ``weights_ids.json``):
    ``$CLIPDEPTH_CACHE_DIR``, else ``~/.cache/clipdepth``.

    ``$CLIPDEPTH_CACHE``, the split lists' own name for the same folder until both caches shared one,
    is still read for one release, with a FutureWarning, so a setting made for it is not silently ignored.
    """
    value = os.environ.get("CLIPDEPTH_CACHE_DIR")
    if not value and os.environ.get("CLIPDEPTH_CACHE"):
        warnings.warn("$CLIPDEPTH_CACHE is deprecated: set $CLIPDEPTH_CACHE_DIR (the same folder)", FutureWarning,
                      stacklevel=2)
        value = os.environ["CLIPDEPTH_CACHE"]
    return Path(value).expanduser() if value else Path.home() / ".cache" / "clipdepth"
