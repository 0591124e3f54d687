"""NYU Depth v2: the BTS/AdaBins folder layout and the original labeled ``.mat`` release.

Layout read by :class:`NYUDepthV2` (``root`` is the ``nyu_depth_v2`` folder)::

    root/sync/<scene>/rgb_XXXXX.jpg, sync_depth_XXXXX.png               (train, BTS "sync" frames)
    root/official_splits/test/<scene>/rgb_XXXXX.jpg, sync_depth_XXXXX.png (official 654 test frames)

Lines of the lists are ``rgb_path depth_path focal`` relative to those folders (the train list
starts its paths with ``/``). Depth PNGs are uint16 millimetres (value / 1000 = metres, 0 = hole).

:class:`NYULabeledMat` reads ``nyu_depth_v2_labeled.mat`` directly (lazily, one frame at a time),
and :func:`export_official_test` writes its official test split in the layout above the way BTS's
``extract_official_train_test_set_from_mat.py`` does: ``rawDepths`` x 1000 cast to uint16 (holes stay
0; the inpainted ``depths`` are not used), RGB with a black border outside rows 7:474 and columns
7:632, file numbers = the 0-based frame index. With ``bts_compatible=True`` the ``.mat`` reader applies
the same steps in memory, so both entry points give identical samples.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from clipdepth._files import atomic_write_text, file_lock
from clipdepth.data.base import ListDataset, Resolved
from clipdepth.data.common import (
    MANIFEST_NAME,
    DataError,
    ListEntry,
    Sample,
    read_manifest,
    require_dir,
    sha256_file,
)
from clipdepth.data.specs import NYU, NYU_BORDER_CROP
from clipdepth.data.splits import split_name

__all__ = [
    "NYU_BORDER_CROP",
    "NYUDepthV2",
    "NYULabeledMat",
    "export_official_test",
    "encode_jpeg",
]

#: JPEG quality used by everything we write (OpenCV's default, which BTS's exporter used).
JPEG_QUALITY = 95
#: Region of the labeled RGB kept by the BTS exporter; outside it the exported image is black.
BTS_RGB_VALID = (slice(7, 474), slice(7, 632))


def encode_jpeg(image_u8: np.ndarray) -> bytes:
    """Encode HxWx3 uint8 RGB as JPEG bytes with our fixed settings (deterministic for equal input)."""
    buf = io.BytesIO()
    Image.fromarray(image_u8, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / np.float32(255.0)


class NYUDepthV2(ListDataset):
    """NYU Depth v2 in the BTS/AdaBins layout (see module docstring).

    ``root`` may also be the ``sync`` or ``official_splits/test`` folder itself. Without
    ``split_file`` the list is found as described in :mod:`clipdepth.data.splits`. Samples are full
    480x640 frames; the training border crop :data:`NYU_BORDER_CROP` is applied by the train
    transforms, not here, so that evaluation sees the whole frame as in the paper. ``subset=N`` reads
    only the first N lines of the list (:class:`~clipdepth.data.base.ListDataset`).
    """

    spec = NYU

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        split_file: str | Path | None = None,
        *,
        on_missing: str = "error",
        fetch: bool = True,
        subset: int | None = None,
    ) -> None:
        self.root = require_dir(root, "NYU Depth v2 root")
        sub = self.root / ("sync" if split == "train" else "official_splits/test")
        self.data_dir = sub if sub.is_dir() else self.root
        super().__init__(self.root, split, split_file, on_missing=on_missing, fetch=fetch, subset=subset)

    def _resolve(self, entry: ListEntry) -> Resolved:
        assert entry.depth is not None
        return Resolved(entry, self.data_dir / entry.rgb, self.data_dir / entry.depth)


# ---------------------------------------------------------------------------------------------
# Original release: nyu_depth_v2_labeled.mat (MATLAB v7.3 = HDF5) + splits.mat (MATLAB v5)
# ---------------------------------------------------------------------------------------------


def load_official_splits(splits_path: str | Path) -> dict[str, np.ndarray]:
    """Read ``splits.mat`` and return 0-based ``{"train": idx, "test": idx}`` (file stores 1-based)."""
    import scipy.io

    p = Path(splits_path)
    if not p.is_file():
        raise DataError(f"{p}: splits file is missing")
    try:
        mat = scipy.io.loadmat(p)
    except (ValueError, OSError, NotImplementedError) as exc:
        raise DataError(f"{p}: cannot read as a MATLAB splits file ({exc})") from None
    out = {}
    for key, split in (("trainNdxs", "train"), ("testNdxs", "test")):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"{p}: splits file has no variable {key!r} (found: {found})")
        out[split] = np.asarray(mat[key]).astype(np.int64).ravel() - 1
    return out


class NYULabeledMat:
    """Lazy reader of ``nyu_depth_v2_labeled.mat`` with the official ``splits.mat``.

    MATLAB stores the 480x640x3x1449 image array column-major, so h5py sees ``images`` as
    (N, 3, W, H) and ``rawDepths``/``depths`` as (N, W, H); frames are transposed back one at a time,
    never loading the 2.8 GB file. ``depth="raw"`` uses ``rawDepths`` (the BTS ground truth, holes are
    0), ``"filled"`` the inpainted ``depths``. ``split`` is ``"train"`` (795), ``"test"`` (654, needs
    ``splits_path``) or ``"all"``. The file handle is reopened after pickling (data loader workers).
    """

    def __init__(
        self,
        mat_path: str | Path,
        splits_path: str | Path | None = None,
        split: str = "test",
        *,
        depth: str = "raw",
        bts_compatible: bool = True,
    ) -> None:
        import h5py

        self.mat_path = Path(mat_path)
        if not self.mat_path.is_file():
            raise DataError(f"{self.mat_path}: labeled .mat file is missing")
        if depth not in ("raw", "filled"):
            raise ValueError(f"depth must be 'raw' or 'filled', not {depth!r}")
        self.depth_key = "rawDepths" if depth == "raw" else "depths"
        self.bts_compatible = bts_compatible
        if not h5py.is_hdf5(self.mat_path):
            raise DataError(
                f"{self.mat_path}: not a MATLAB v7.3 (HDF5) file; expected the original "
                "nyu_depth_v2_labeled.mat"
            )
        self._h5 = None
        f = self._file()
        found = sorted(f.keys())
        for key in ("images", self.depth_key):
            if key not in f:
                raise DataError(f"{self.mat_path}: missing dataset {key!r} (found: {found})")
        images, depths = f["images"], f[self.depth_key]
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"{self.mat_path}: 'images' has shape {images.shape}; expected (N, 3, W, H)")
        if depths.ndim != 3 or depths.shape != (images.shape[0], images.shape[2], images.shape[3]):
            raise DataError(
                f"{self.mat_path}: {self.depth_key!r} has shape {depths.shape}; expected "
                f"{(images.shape[0], images.shape[2], images.shape[3])} to match 'images'"
            )
        self.num_frames = int(images.shape[0])
        self.height, self.width = int(images.shape[3]), int(images.shape[2])
        self._scenes: list[str] | None = None
        if split == "all":
            self.indices = np.arange(self.num_frames)
        else:
            if splits_path is None:
                raise ValueError(f"split {split!r} needs splits_path (splits.mat)")
            try:
                self.indices = load_official_splits(splits_path)[split]
            except KeyError:
                raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}") from None
            bad = self.indices[(self.indices < 0) | (self.indices >= self.num_frames)]
            if bad.size:
                raise DataError(
                    f"{splits_path}: index {int(bad[0]) + 1} (1-based) outside the {self.num_frames} "
                    f"frames of {self.mat_path}"
                )
        self.split = split

    def _file(self):
        if self._h5 is None:
            import h5py

            try:
                self._h5 = h5py.File(self.mat_path, "r")
            except OSError as exc:
                raise DataError(f"{self.mat_path}: cannot open as HDF5 ({exc})") from None
        return self._h5

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def close(self) -> None:
        """Close the HDF5 handle (it is reopened on the next access)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def scene(self, frame: int) -> str:
        """Scene type of a frame (``sceneTypes``, e.g. ``bathroom``): the BTS test folder name."""
        if self._scenes is None:
            f = self._file()
            if "sceneTypes" in f:
                refs = f["sceneTypes"][()].ravel()
                self._scenes = ["".join(chr(int(c)) for c in np.asarray(f[r]).ravel()) for r in refs]
            else:
                self._scenes = ["scene"] * self.num_frames
        return self._scenes[frame]

    def __len__(self) -> int:
        return int(self.indices.size)

    def frame_u8(self, frame: int) -> np.ndarray:
        """Raw RGB of a 0-based frame as HxWx3 uint8."""
        return np.ascontiguousarray(np.asarray(self._file()["images"][frame]).transpose(2, 1, 0))

    def frame_depth(self, frame: int) -> np.ndarray:
        """Depth of a 0-based frame in metres as stored (float), HxW."""
        return np.ascontiguousarray(np.asarray(self._file()[self.depth_key][frame]).T)

    def name(self, frame: int) -> str:
        """Sample name, equal to the exported BTS path without extension."""
        return f"{self.scene(frame)}/rgb_{frame:05d}"

    def __getitem__(self, index: int) -> Sample:
        frame = int(self.indices[index])
        rgb = self.frame_u8(frame)
        depth = self.frame_depth(frame)
        if self.bts_compatible:
            image = _decode_jpeg(encode_jpeg(bts_border(rgb)))
            depth = depth_to_mm(depth).astype(np.float32) / np.float32(NYU.depth_scale)
        else:
            image = rgb.astype(np.float32) / np.float32(255.0)
            depth = np.where(np.isfinite(depth), depth, 0).astype(np.float32)
        return Sample(image=image, depth=depth, name=self.name(frame), focal=NYU.focal)


def bts_border(rgb: np.ndarray) -> np.ndarray:
    """Black out everything outside rows 7:474, cols 7:632, as BTS's exporter does."""
    out = np.zeros_like(rgb)
    out[BTS_RGB_VALID] = rgb[BTS_RGB_VALID]
    return out


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres to uint16 millimetres by truncation, the BTS exporter's ``astype(np.uint16)``."""
    d = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0).astype(np.float32)
    return np.clip(d * np.float32(1000.0), 0, 65535).astype(np.uint16)


def export_official_test(
    mat_path: str | Path,
    splits_path: str | Path,
    out_root: str | Path,
    *,
    progress: bool = True,
) -> Path:
    """Write the official test split of the labeled ``.mat`` in the BTS layout under ``out_root``.

    Produces ``official_splits/test/<scene>/rgb_%05d.jpg`` and ``sync_depth_%05d.png`` (0-based frame
    index), the list ``nyudepthv2_test_files_with_gt.txt`` and a manifest entry recording its
    checksum, so :class:`NYUDepthV2` (``split="test"``) reads the result with no further arguments.
    Returns the list path.
    """
    reader = NYULabeledMat(mat_path, splits_path, "test", bts_compatible=True)
    out_root = Path(out_root)
    test_dir = out_root / "official_splits" / "test"
    lines = []
    frames = [int(i) for i in reader.indices]
    if progress:
        from tqdm.auto import tqdm

        frames = tqdm(frames, desc="exporting NYU test", unit="frame")
    for frame in frames:
        scene = reader.scene(frame)
        folder = test_dir / scene
        folder.mkdir(parents=True, exist_ok=True)
        rgb_rel, depth_rel = f"{scene}/rgb_{frame:05d}.jpg", f"{scene}/sync_depth_{frame:05d}.png"
        (test_dir / rgb_rel).write_bytes(encode_jpeg(bts_border(reader.frame_u8(frame))))
        Image.fromarray(depth_to_mm(reader.frame_depth(frame))).save(test_dir / depth_rel, format="PNG")
        lines.append(f"{rgb_rel} {depth_rel} {NYU.focal}")
    reader.close()
    list_path = out_root / split_name("nyu", "test")
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    update_manifest(
        out_root,
        {"splits": {"test": {"file": list_path.name, "sha256": sha256_file(list_path)}}},
        source={"kind": "nyu_mat_export", "mat": str(mat_path), "splits": str(splits_path)},
    )
    return list_path


def update_manifest(root: Path, update: dict, source: dict | None = None) -> None:
    """Merge split entries (and an optional source record) into ``root``'s manifest, atomically.

    Read, merge and write happen under the manifest's lock, so two exports into one data root (the
    train and the test split, run at once) both land, and the file is written under a unique name."""
    with file_lock(root / MANIFEST_NAME, what=f"manifest of {root}"):
        manifest = read_manifest(root) or {}
        manifest.setdefault("splits", {}).update(update.get("splits", {}))
        if source is not None:
            manifest.setdefault("sources", []).append(source)
        atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
