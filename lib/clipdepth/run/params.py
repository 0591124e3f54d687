"""The declared type of every notebook parameter, checked before anything runs.

Why a table: papermill injects any value into a notebook, so ``-p epochs abc`` or ``-p device cuda``
on a machine without CUDA would otherwise fail 20-40 s later, inside a kernel, with an error that does
not name the parameter. :data:`PARAMETERS` declares, for each name used by a ``parameters`` cell of
``notebooks/*.ipynb``, what is allowed (including for those whose default is ``None``); ``run_all``
checks every ``-p NAME VALUE`` against it and stops with exit status 2 and one line naming the
parameter and what is allowed. A test compares the table with the notebooks' parameters cells, so
the two cannot drift apart. Parameters notebooks will gain later may be declared ahead. A notebook
from another folder (``--notebooks-dir``) may have parameters not declared here; :func:`check_parameter`
checks those against the type of their default, so there is one checker. (papermill's
``inspect_notebook`` gives defaults as source text and types only from annotations, so the defaults are
read with ``ast.literal_eval`` by :func:`clipdepth.run.run_all.notebook_parameters`.)

Path parameters are resolved here too, once, from the directory the user called ``./run_all.sh``
from (``run_all.sh`` changes into the repository, and the kernels run in ``notebooks/``, so a relative
path would otherwise mean a different file in each place); notebooks receive absolute paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdepth.vocab import ARCHS, DATASETS, is_weights_file

__all__ = [
    "PARAMETERS",
    "Param",
    "ParameterError",
    "check_parameter",
    "cuda_device_count",
]


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


def _existing(folder: bool) -> Param:
    """None, or an existing file (``folder=False``) / folder, made absolute (notebook 05's checkpoints)."""
    kind = "folder" if folder else "file"

    def check(value: Any, base: Path) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _Reject()
        path = _absolute(value, base)
        if not (path.is_dir() if folder else path.is_file()):
            raise _Reject(f"{kind} {path} does not exist")
        return str(path)

    return Param(f"None or an existing {kind}", check, path=True)


def _options() -> Param:
    """None or a dict of LLM-MDE config fields (``clipdepth.baselines.llm_mde.LLMMDEConfig``)."""

    def check(value: Any, base: Path) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _Reject()
        from clipdepth.baselines.llm_mde import LLMMDEConfig

        fields = set(LLMMDEConfig.__dataclass_fields__)
        bad = sorted(set(value) - fields)
        if bad:
            raise _Reject(f"unknown LLM-MDE option(s) {', '.join(map(str, bad))}")
        return value

    return Param('None or a dict of LLM-MDE config fields (e.g. {"n_prototypes": 100})', check)


def _absolute(value: str | os.PathLike[str], base: Path) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _weights() -> Param:
    def check(value: Any, base: Path) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise _Reject()
        candidate = _absolute(value, base)
        if candidate.is_dir():
            raise _Reject(f"{candidate} is a directory, not a checkpoint file")
        if is_weights_file(value, base):
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
            if is_weights_file(tag, base):
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
    "num_workers": _integer(0, none=True),
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
    "llm_mde_vit": _existing(folder=False),
    "llm_mde_bert": _existing(folder=True),
    "llm_mde_options": _options(),
}

#: Declared for notebooks that will gain them; the drift test does not require them in a notebook yet.
FUTURE: frozenset[str] = frozenset()  # subset, precision and seeds are in notebooks 01-03 now


def _like(default: Any) -> Param:
    """What an undeclared parameter accepts (a notebook of another folder, ``--notebooks-dir``): a value
    of its default's type; a bare string ``a,b`` for a list; any value when the default is ``None``."""
    def check(value: Any, base: Path) -> Any:
        if default is None or value is None or isinstance(default, bool) and isinstance(value, bool):
            return value
        if isinstance(default, (list, tuple)) and isinstance(value, (str, list, tuple)):
            return _items(value)
        if isinstance(value, bool) or isinstance(default, bool):
            raise _Reject()
        if isinstance(default, float) and isinstance(value, (int, float)):
            return float(value)
        if isinstance(default, str) and isinstance(value, (str, int, float)):
            return str(value)
        if isinstance(value, type(default)):
            return value
        raise _Reject()

    if isinstance(default, bool):
        return Param("true or false", check)
    kind = "list" if isinstance(default, (list, tuple)) else type(default).__name__
    return Param(f"a {kind} value like its default {default!r}", check)


def check_parameter(name: str, value: Any, base: str | os.PathLike[str],
                    defaults: Mapping[str, Any] | None = None) -> Any:
    """``value`` as the notebook should receive it (paths absolute from ``base``), or :class:`ParameterError`.

    Names not in :data:`PARAMETERS` are checked against their default in ``defaults`` (the notebook's
    parameters cell, :func:`clipdepth.run.run_all.notebook_parameters`), else returned unchanged.
    """
    param = PARAMETERS.get(name) or (_like(defaults[name]) if defaults and name in defaults else None)
    if param is None:
        return value
    try:
        return param.check(value, Path(base))
    except _Reject as exc:
        why = f" ({exc})" if str(exc) else ""
        raise ParameterError(f"parameter {name!r}: {value!r} is not allowed{why}; allowed: {param.allowed}") from None
