"""Where a number came from: package versions, git state, weights identity.

Why a module of its own: every results file records the same provenance (DESIGN.md section 5b), and
``./run_all.sh`` (:mod:`clipdepth.run.run_all`) checks the paper profile's weights with the same lookup
that identifies them in results. Nothing here computes a number or draws a table; it reads the
environment and never downloads.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from clipdepth._files import repo_root
from clipdepth.model.checkpoints import weights_id
from clipdepth.study import experiments
from clipdepth.train import _codeid as codeid

__all__ = [
    "environment_info",
    "find_cached_weights",
    "git_state",
    "weights_info",
]

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
