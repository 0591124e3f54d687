"""Where a number came from: repository paths, the device, package versions, git state, weights identity.

Why a module of its own: every results file records the same provenance (DESIGN.md section 5b), and
``./run_all.sh`` (:mod:`clipdepth.run.run_all`) checks the paper profile's weights with the same lookup
that identifies them in results. Nothing here computes a number or draws a table; it reads the
environment (and sets a variable for a block, :func:`scoped_environ`), and never downloads.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from clipdepth.model.checkpoints import weights_id
from clipdepth.study import experiments
from clipdepth.train import _codeid as codeid

__all__ = [
    "environment_info",
    "find_cached_weights",
    "git_state",
    "repo_path",
    "repo_root",
    "resolve_device",
    "scoped_environ",
    "weights_info",
]

_REPO_MARKERS = ("pyproject.toml", "notebooks")


@contextlib.contextmanager
def scoped_environ(name: str, value: str | None) -> Iterator[None]:
    """Set ``$name`` to ``value`` for the block (``None``: leave it as it is), then restore what was there
    (unset if it was unset): worker processes started inside the block inherit it."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def repo_root() -> Path:
    """The repository root: the nearest folder above the cwd holding ``pyproject.toml`` and ``notebooks/``.

    Why search from the cwd first: Jupyter, nbval and papermill (``--cwd notebooks``) start kernels in
    ``notebooks/``, a user may start one at the root; both must find the same ``data/`` and
    ``reports/``. The package location (an editable install lives in ``lib/``) is the fallback, the
    cwd the last resort.
    """
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if all((folder / marker).exists() for marker in _REPO_MARKERS):
            return folder
    package_parent = Path(__file__).resolve().parents[2]
    if all((package_parent / marker).exists() for marker in _REPO_MARKERS):
        return package_parent
    return here


def repo_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute; relative paths are taken relative to :func:`repo_root`, not the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) picks CUDA when visible, else CPU; anything else is returned unchanged."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


_VERSIONED = (
    "clipdepth", "torch", "torchvision", "open_clip_torch", "numpy", "pandas", "matplotlib",
    "papermill", "nbconvert", "ipykernel",
)


def environment_info() -> dict[str, Any]:
    """Package versions, Python, platform and git state: what a reader needs to trust a number."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"versions": versions, "platform": platform.platform(), "git": git_state()}


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repository (None values outside a git checkout)."""
    return codeid.git_state(root or repo_root())


def weights_info(weights: str | None, profile: str, arch: str = "RN50-quickgelu") -> dict[str, Any]:
    """What CLIP weights a run used: the requested value, the effective one and a stable id.

    A local file or a tag found in open_clip's cache is identified by its SHA-256, so results from
    different machines can be matched on the exact weights rather than on a path or a name.
    """
    effective = weights if weights is not None else experiments.PROFILES[profile].weights
    info: dict[str, Any] = {"requested": weights, "effective": effective, "arch": arch}
    info["id"] = weights_id(effective)
    if effective is not None and not Path(str(effective)).expanduser().is_file():
        cached = find_cached_weights(arch, str(effective))
        if cached is not None:
            info["file"] = str(cached)
            info["sha256"] = weights_id(str(cached)).removeprefix("sha256:")  # hashed once, then cached
    return info


def find_cached_weights(arch: str, tag: str) -> Path | None:
    """The local file open_clip would load for ``(arch, tag)`` without a network, if there is one.

    Looks where open_clip downloads to: the Hugging Face hub cache (its preferred source) and
    ``~/.cache/clip`` (OpenAI URLs). Never downloads.
    """
    try:
        import open_clip
    except ImportError:
        return None
    try:
        cfg = open_clip.get_pretrained_cfg(arch, tag)
    except Exception:
        return None
    if not cfg:
        return None
    hub = cfg.get("hf_hub") or ""
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            model_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            for name in names:
                found = try_to_load_from_cache(model_id, name)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = cfg.get("url") or ""
    if url:
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None
