"""The declared type of every notebook parameter, checked before anything runs.

Why a table: papermill injects any value into a notebook, so ``-p epochs abc`` or ``-p device cuda``
on a machine without CUDA would otherwise fail 20-40 s later, inside a kernel, with an error that does
not name the parameter. :data:`PARAMETERS` declares, for each name used by a ``parameters`` cell of
``notebooks/*.ipynb``, what is allowed (including for those whose default is ``None``); ``run_all``
checks every ``-p NAME VALUE`` against it and stops with exit status 2 and one line naming the
parameter and what is allowed. A test compares the table with the notebooks' parameters cells, so
the two cannot drift apart. Parameters notebooks will gain later may be declared ahead.

Path parameters are resolved here too, once, from the directory the user called ``./run_all.sh``
from (``run_all.sh`` changes into the repository, and the kernels run in ``notebooks/``, so a relative
path would otherwise mean a different file in each place); notebooks receive absolute paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DATASETS",
    "PARAMETERS",
    "Param",
    "ParameterError",
    "check_parameter",
    "cuda_device_count",
    "looks_like_file",
    "output_dir_problem",
]

#: File suffixes that make a ``weights`` value a checkpoint path rather than an open_clip tag.
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors", ".ckpt"})
DATASETS = ("nyu", "kitti")
ARCHS = ("RN50-quickgelu", "RN101-quickgelu", "ViT-B-32-quickgelu", "ViT-B-16")  # backbone.SUPPORTED_ARCHS


class ParameterError(ValueError):
    """A parameter value that is not allowed; the message is one line naming the parameter."""


class _Reject(ValueError):
    """Raised by a checker; the optional message says why beyond "not allowed"."""


@dataclass(frozen=True)
class Param:
    """What one parameter accepts: ``allowed`` in words, ``check(value, base)`` returns the value to pass."""

    allowed: str
    check: Callable[[Any, Path], Any]
    path: bool = False  # resolved to an absolute path (from ``base``) when given


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(minimum: int, none: bool = False, multiple_of: int = 1) -> Param:
    def check(value: Any, base: Path) -> Any:
        if value is None and none:
            return None
        if not _is_int(value) or value < minimum or value % multiple_of:
            raise _Reject()
        return value

    words = f"an integer >= {minimum}" + (f", a multiple of {multiple_of}" if multiple_of > 1 else "")
    return Param(words + (", or None" if none else ""), check)


def _epochs() -> Param:
    """Training epochs of the trained rows: 0 is refused, since it would silently turn every trained row into
    an untrained evaluation (the untrained rows are evaluated in every run anyway)."""
    base = _integer(1, none=True)

    def check(value: Any, base_dir: Path) -> Any:
        if _is_int(value) and value == 0:
            raise _Reject("0 epochs would turn the trained rows into untrained evaluations, which every run "
                          "already reports")
        return base.check(value, base_dir)

    return Param(base.allowed, check)


def _positive_float(none: bool = False) -> Param:
    def check(value: Any, base: Path) -> Any:
        if value is None and none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _Reject()
        return float(value)

    return Param("a number > 0" + (", or None" if none else ""), check)


def _boolean() -> Param:
    def check(value: Any, base: Path) -> Any:
        if not isinstance(value, bool):
            raise _Reject()
        return value

    return Param("true or false", check)


def _choice(*choices: str, none: bool = False) -> Param:
    def check(value: Any, base: Path) -> Any:
        if value is None and none:
            return None
        if value not in choices:
            raise _Reject()
        return value

    return Param(" | ".join(choices) + (" | None" if none else ""), check)


def _items(value: Any) -> list[Any]:
    """A list value: a list/tuple, or a bare string ``a,b`` (people type ``-p datasets nyu``)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _list_of(choices: Sequence[str]) -> Param:
    def check(value: Any, base: Path) -> Any:
        items = _items(value)
        bad = [v for v in items if v not in choices]
        if not items or bad:
            raise _Reject(f"unknown {', '.join(map(repr, bad))}" if bad else "the list is empty")
        return list(dict.fromkeys(items))

    return Param(f"a non-empty list of {', '.join(choices)} (e.g. {list(choices)!r} or nyu,kitti)", check)


def _seeds() -> Param:
    def check(value: Any, base: Path) -> Any:
        if value is None:  # the profile's seeds (clipdepth.train.plan.DEFAULT_SEEDS)
            return None
        items = _items(value) if not _is_int(value) else [value]
        items = [int(v) if isinstance(v, str) and re.fullmatch(r"\d+", v) else v for v in items]
        if not items or not all(_is_int(v) and v >= 0 for v in items):
            raise _Reject()
        return items

    return Param("a non-empty list of integers >= 0 (e.g. [42, 43, 44] or 42,43,44), or None (the profile's)", check)


def _path() -> Param:
    def check(value: Any, base: Path) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise _Reject()
        return str(_absolute(value, base))

    return Param("a folder path (relative paths are taken from the directory run_all.sh was called from)",
                 check, path=True)


def _absolute(value: str | os.PathLike[str], base: Path) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def output_dir_problem(path: str | os.PathLike[str], option: str) -> str | None:
    """Why the folder ``path`` (given as ``option``) cannot receive outputs, or None: a file where the folder
    or one of its parents should be, or a folder this process may not write. Checked before any work and
    without creating anything (``--plan`` writes nothing), so results are never computed and then lost."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{option} {path}: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{option} {path}: {probe} is not writable"
    return None


def looks_like_file(value: str) -> bool:
    """Whether a ``weights`` value names a file (a checkpoint suffix, a path separator, ``~`` or ``.``)."""
    return (Path(value).suffix in CHECKPOINT_SUFFIXES or os.sep in value or "/" in value
            or value.startswith(("~", ".")))


def _weights() -> Param:
    def check(value: Any, base: Path) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise _Reject()
        candidate = _absolute(value, base)
        if candidate.is_dir():
            raise _Reject(f"{candidate} is a directory, not a checkpoint file")
        if looks_like_file(value) or candidate.is_file():
            if not candidate.is_file():
                raise _Reject(f"file {candidate} does not exist")
            return str(candidate)
        if value == "openai" or value in _open_clip_tags():
            return value
        raise _Reject(f"{value!r} is neither an open_clip pretrained tag nor an existing file under {base}")

    return Param('None, "openai" (or another open_clip pretrained tag), or an existing checkpoint file', check,
                 path=True)


def _backbones() -> Param:
    def check(value: Any, base: Path) -> Any:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise _Reject("expected a non-empty list of [architecture, tag] pairs")
        models: set[str] | None = None
        out: list[list[str | None]] = []
        for pair in value:
            if isinstance(pair, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise _Reject(f"{pair!r} is not an [architecture, tag] pair")
            arch, tag = pair
            if models is None:
                models = _open_clip_models()
            if not isinstance(arch, str) or arch not in models:
                raise _Reject(f"{arch!r} is not an open_clip architecture (open_clip.list_models())")
            if tag is None:
                out.append([arch, None])
                continue
            if not isinstance(tag, str) or not tag:
                raise _Reject(f"the tag of {arch} must be a string or None, got {tag!r}")
            candidate = _absolute(tag, base)
            if looks_like_file(tag) or candidate.is_file():
                if not candidate.is_file():
                    raise _Reject(f"file {candidate} does not exist")
                out.append([arch, str(candidate)])
                continue
            tags = _open_clip_tags_of(arch)
            if tag not in tags:
                raise _Reject(f"{tag!r} is not a pretrained tag of {arch} (tags: {', '.join(tags) or 'none'}) "
                              "nor an existing file")
            out.append([arch, tag])
        if len({tuple(p) for p in out}) != len(out):
            raise _Reject("a pair is repeated")
        return out

    return Param('a non-empty list of [architecture, tag] pairs: an open_clip architecture and None (random '
                 'init), one of its open_clip pretrained tags, or an existing checkpoint file (e.g. '
                 '[["RN50-quickgelu", None]])', check, path=True)


def _open_clip_models() -> set[str]:
    """open_clip's architecture names (imported only when a ``backbones`` value is checked)."""
    import open_clip

    return set(open_clip.list_models())


def _open_clip_tags_of(arch: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def _open_clip_tags() -> set[str]:
    """Every pretrained tag open_clip knows (imported only when a tag other than "openai" is given)."""
    try:
        import open_clip
    except ImportError:
        return set()
    return {tag for _, tag in open_clip.list_pretrained()}


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 without CUDA); torch is imported only when a value asks for CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _device() -> Param:
    def check(value: Any, base: Path) -> Any:
        if not isinstance(value, str):
            raise _Reject()
        match = re.fullmatch(r"cuda(?::(\d+))?", value)
        if value in ("cpu", "auto"):
            return value
        if not match:
            raise _Reject()
        count = cuda_device_count()
        if count == 0:
            raise _Reject("no CUDA device is available on this machine")
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise _Reject(f"this machine has {count} CUDA device(s), numbered from 0")
        return value

    return Param("cpu | auto | cuda | cuda:N (cuda only where a CUDA device is available)", check)


#: Every notebook parameter and what it accepts. ``profile`` and ``reports_dir`` are set by run_all's
#: own options; they are declared so notebooks run by hand are described too.
PARAMETERS: dict[str, Param] = {
    "profile": _choice("demo", "paper"),
    "datasets": _list_of(DATASETS),
    "data_dir": _path(),
    "weights": _weights(),
    "device": _device(),
    "seed": _integer(0),
    "seeds": _seeds(),
    "epochs": _epochs(),
    "subset": _integer(1, none=True),
    "train_mode": _choice("faithful", "cached"),
    "precision": _choice("fp32", "tf32", "bf16"),
    "views": _integer(1),
    "force": _boolean(),
    "allow_stale": _boolean(),
    "reports_dir": _path(),
    "runs_dir": _path(),
    "cache_dir": _path(),
    "backbones": _backbones(),
    "vocab_limit": _integer(1, none=True),
    "top_k": _integer(1),
    "clip2depth_arch": _choice(*ARCHS, none=True),
    "clip2depth_epochs": _integer(0, none=True),
    "clip2depth_max_steps": _integer(1, none=True),
    "clip2depth_batch_size": _integer(1, none=True),
    "clip2depth_lr": _positive_float(none=True),
    "llm_mde_epochs": _integer(0, none=True),
    "llm_mde_max_steps": _integer(1, none=True),
    "llm_mde_batch_size": _integer(1, none=True),
    "llm_mde_lr": _positive_float(none=True),
    "llm_mde_image_size": _integer(16, none=True, multiple_of=16),
}

#: Declared for notebooks that will gain them; the drift test does not require them in a notebook yet.
FUTURE: frozenset[str] = frozenset()  # subset, precision and seeds are in notebooks 01-03 now


def check_parameter(name: str, value: Any, base: str | os.PathLike[str]) -> Any:
    """``value`` as the notebook should receive it (paths absolute from ``base``), or :class:`ParameterError`.

    Names not in :data:`PARAMETERS` are returned unchanged (run_all checks those against the notebook
    default's type).
    """
    param = PARAMETERS.get(name)
    if param is None:
        return value
    try:
        return param.check(value, Path(base))
    except _Reject as exc:
        why = f" ({exc})" if str(exc) else ""
        raise ParameterError(f"parameter {name!r}: {value!r} is not allowed{why}; allowed: {param.allowed}") from None
