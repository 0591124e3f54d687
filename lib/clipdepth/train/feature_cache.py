"""Feature cache: dense CLIP features computed once, memory-mapped for every later run.

The image encoder is frozen, so its output depends only on (weights, dense mode, normalisation, input
size, the images and their augmentation view). The ~25 runs on one dataset then share one pass of the
image encoder, and a training step costs one text-encoder pass and a matmul.

Layout: ``<root>/<key digest>/`` holds ``features.npy`` (N x C x h x w, float16 by default),
``depth.npy`` (N x H x W ground truth as uint16 in the dataset's PNG units, which is exact because
depth is only ever cropped, flipped or nearest-rotated) and ``manifest.json`` with the key, shapes and
a BLAKE2 checksum of each array. A folder is written under a unique temporary name
(:func:`clipdepth._files.make_temp_dir`: host and pid in the name, the user's umask so a shared cache
stays shared) and renamed when complete; a folder whose sizes or checksums disagree with its manifest
is rebuilt with a warning, never read.

Several processes (two notebooks, two ``./run_all.sh``, Slurm jobs on a shared filesystem) may ask for
the same entry at once. Each build holds the inter-process lock ``<root>/<digest>.lock``, so the second
process waits and then reuses the first one's entry instead of computing it again; a build first
removes the temporaries of processes that died mid-build (an entry at paper size is ~11 GB), saying so
on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from clipdepth._files import clean_stale_temporaries, file_lock, make_temp_dir

FEATURES_VERSION = "1"  # bump when the feature computation changes: old caches then miss
MANIFEST = "manifest.json"
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class FeatureKey:
    """Everything the cached arrays depend on."""

    arch: str
    weights: str  # backbone.weights_id(): "random:<seed>", "sha256:<file hash>" or "tag:<name>"
    dense_mode: str
    image_norm: str
    input_size: tuple[int, int]
    split: str  # hash of the split file (or of the list of sample names)
    view: str  # "test", "test-flip", or "train-aug<seed>-<v>"
    dtype: str = "float16"
    depth_scale: float = 1000.0
    version: str = FEATURES_VERSION

    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class CachedFeatures:
    """Read-only memory maps of one cache entry."""

    key: FeatureKey
    features: np.ndarray  # N x C x h x w
    depth: np.ndarray  # N x H x W, uint16 in 1/depth_scale metres
    path: Path

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def batch(self, indices: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32) and depth in metres (``B x 1 x H x W``) for ``indices``."""
        idx = np.asarray(indices)
        feats = torch.from_numpy(np.asarray(self.features[idx], dtype=np.float32)).to(device)
        depth = torch.from_numpy(self.depth[idx].astype(np.float32) / np.float32(self.key.depth_scale))
        return feats, depth.unsqueeze(1).to(device)


def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_fingerprint(names: Sequence[str]) -> str:
    """Identify a split by the ordered names of its samples (robust to where the files live)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


class FeatureCache:
    """A folder of cache entries, one per :class:`FeatureKey`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: FeatureKey) -> Path:
        return self.root / key.digest()

    def load(self, key: FeatureKey, verify: bool = True, repair: bool = True) -> CachedFeatures | None:
        """The entry for ``key``, or ``None`` when absent or damaged.

        With ``repair`` a damaged entry is reported and removed; without it (a look without holding the
        entry's lock, where another process may be replacing the folder) it is only reported as absent.
        """
        folder = self.path(key)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return None
        problem = None
        try:
            manifest = json.loads(manifest_path.read_text())
            for name in ("features", "depth"):
                entry = manifest["arrays"][name]
                file = folder / entry["file"]
                if not file.is_file() or file.stat().st_size != entry["bytes"]:
                    problem = f"{file} is missing or has the wrong size"
                elif verify and _checksum(file) != entry["checksum"]:
                    problem = f"{file} does not match its checksum"
                if problem:
                    break
            if problem is None and manifest["key"] != json.loads(json.dumps(asdict(key), default=list)):
                problem = f"{manifest_path} records a different key"
        except (OSError, ValueError, KeyError) as exc:
            problem = f"{manifest_path} is unreadable ({exc})"
        if problem:
            if repair:
                warnings.warn(f"feature cache entry damaged, rebuilding: {problem}", stacklevel=2)
                shutil.rmtree(folder, ignore_errors=True)
            return None
        feats = np.load(folder / "features.npy", mmap_mode="r")
        depth = np.load(folder / "depth.npy", mmap_mode="r")
        return CachedFeatures(key, feats, depth, folder)

    def get_or_build(
        self,
        key: FeatureKey,
        n: int,
        compute: Callable[[list[int]], tuple[torch.Tensor, np.ndarray]],
        batch_size: int = 8,
        progress: bool = True,
    ) -> CachedFeatures:
        """Load ``key``'s entry, or build it: ``compute(indices)`` returns the features
        (``B x C x h x w``) and the depth maps in metres (``B x H x W``) of those samples.

        The build holds the entry's inter-process lock: a second process asking for the same entry
        waits, then loads what the first one wrote (``compute`` is called by one process only).
        """
        cached = self.load(key, repair=False)
        if cached is not None and len(cached) == n:
            return cached
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        with file_lock(final, what=f"feature cache entry {final}"):
            cached = self.load(key)  # built by another process while we waited for the lock?
            if cached is not None and len(cached) == n:
                return cached
            clean_stale_temporaries(self.root)
            self._build(key, n, compute, batch_size, progress, final)
        loaded = self.load(key, verify=False)
        assert loaded is not None
        return loaded

    def _build(
        self,
        key: FeatureKey,
        n: int,
        compute: Callable[[list[int]], tuple[torch.Tensor, np.ndarray]],
        batch_size: int,
        progress: bool,
        final: Path,
    ) -> None:
        """Write the entry into a unique temporary folder and rename it onto ``final`` (lock held)."""
        tmp = make_temp_dir(final)
        try:
            feats_mm = depth_mm = None
            for start in tqdm(range(0, n, batch_size), desc=f"features {key.view}", disable=not progress,
                              leave=False):
                idx = list(range(start, min(start + batch_size, n)))
                feats, depth = compute(idx)
                depth_units = np.rint(np.asarray(depth, dtype=np.float64) * key.depth_scale)
                if depth_units.max(initial=0) > np.iinfo(np.uint16).max:
                    raise ValueError(f"depth beyond {np.iinfo(np.uint16).max / key.depth_scale} m cannot be cached")
                if feats_mm is None:
                    feats_mm = np.lib.format.open_memmap(tmp / "features.npy", mode="w+",
                                                         dtype=DTYPES[key.dtype], shape=(n, *feats.shape[1:]))
                    depth_mm = np.lib.format.open_memmap(tmp / "depth.npy", mode="w+", dtype=np.uint16,
                                                         shape=(n, *depth_units.shape[1:]))
                feats_mm[idx[0] : idx[-1] + 1] = feats.detach().cpu().numpy().astype(DTYPES[key.dtype])
                depth_mm[idx[0] : idx[-1] + 1] = depth_units.astype(np.uint16)
            if feats_mm is None:
                raise ValueError("cannot cache an empty split")
            feats_mm.flush()
            depth_mm.flush()
            del feats_mm, depth_mm
            arrays = {}
            for name in ("features", "depth"):
                file = tmp / f"{name}.npy"
                arrays[name] = {"file": file.name, "bytes": file.stat().st_size, "checksum": _checksum(file)}
            manifest = {"key": json.loads(json.dumps(asdict(key), default=list)), "n": n, "arrays": arrays}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
