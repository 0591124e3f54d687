"""Pieces shared by the dataset readers: the sample record, the error type, file decoding, list parsing.

Every reader goes through these functions so that a broken input gives the same kind of message
everywhere: one :class:`DataError` naming the file and what is wrong with it, instead of a PIL or h5py
traceback from deep inside a data loader worker.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Name of the small JSON file our own tools (synthetic writer, .mat exporter) leave in a dataset root.
#: It names the split lists that belong to that root, with their SHA-256, so readers can use them
#: without a ``split_file`` argument and still detect a list that was edited or truncated.
MANIFEST_NAME = "clipdepth_dataset.json"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class DataError(ValueError):
    """A dataset file or layout problem, with the offending path in the message."""


@dataclass
class Sample:
    """One RGB-D frame as every reader returns it.

    ``image`` is float32 HxWx3 in [0, 1] (normalisation for the backbone happens later, in the model);
    ``depth`` is float32 HxW in metres, where 0 means "no ground truth" at that pixel; ``focal`` is the
    horizontal focal length in pixels of *this* image (after any crop, which does not change it).
    """

    image: np.ndarray
    depth: np.ndarray
    name: str
    focal: float

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class RawFrame:
    """A frame as decoded, before conversion to float: what the AdaBins augmentation starts from.

    ``image`` is uint8 HxWx3, ``depth`` the uint16 values of the depth PNG (0 = no ground truth), both
    after the reader's crop; :meth:`sample` converts them exactly as the reader's ``__getitem__`` does.
    """

    image: np.ndarray
    depth: np.ndarray
    depth_scale: float
    name: str
    focal: float

    def sample(self) -> Sample:
        """The float sample (image / 255, depth / scale in float32), byte for byte the reader's."""
        image = np.asarray(self.image, dtype=np.float32) / np.float32(255.0)
        depth = np.asarray(self.depth, dtype=np.float32) / np.float32(self.depth_scale)
        return Sample(image=np.ascontiguousarray(image), depth=np.ascontiguousarray(depth), name=self.name,
                      focal=self.focal)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB archives do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def require_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, or raise a DataError saying which root is missing."""
    p = Path(path)
    if not p.is_dir():
        state = "is not a directory" if p.exists() else "does not exist"
        raise DataError(f"{p}: {what} {state}")
    return p


def _open_image(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{path}: {what} file is missing")
    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated file raises here, not later inside numpy
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode {what} (corrupt or truncated file: {exc})") from None
    return img


def read_rgb_u8(path: str | Path) -> np.ndarray:
    """Decode an RGB image file to uint8 HxWx3 (PIL; Pillow decodes JPEG with libjpeg-turbo)."""
    img = _open_image(Path(path), "image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an RGB image file to float32 HxWx3 in [0, 1]."""
    return read_rgb_u8(path).astype(np.float32) / np.float32(255.0)


def read_depth_u16(path: str | Path) -> np.ndarray:
    """Decode a 16-bit single-channel depth PNG to its raw uint16 values.

    An 8-bit PNG is refused rather than rescaled: dividing 0-255 by the dataset's depth scale would
    give a depth map that looks plausible and is silently wrong (e.g. at most 0.255 m for NYU).
    """
    p = Path(path)
    img = _open_image(p, "depth map")
    if img.mode not in _SIXTEEN_BIT_MODES:
        raise DataError(
            f"{p}: depth PNG has mode {img.mode!r} (8-bit or colour); expected a 16-bit single-channel PNG"
        )
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DataError(f"{p}: depth map has shape {arr.shape}; expected a single channel")
    if arr.dtype != np.uint16:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise DataError(f"{p}: depth values outside the uint16 range")
        arr = arr.astype(np.uint16)
    return arr


def read_depth_png(path: str | Path, scale: float) -> np.ndarray:
    """Decode a 16-bit depth PNG to float32 metres (value / ``scale``; 0 stays 0 = no ground truth)."""
    return read_depth_u16(path).astype(np.float32) / np.float32(scale)


def write_depth_png(path: str | Path, depth_m: np.ndarray, scale: float) -> None:
    """Write metres as a uint16 PNG (value = round(depth * scale)); non-finite or <= 0 becomes 0."""
    d = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0.0).astype(np.float64)
    values = np.clip(np.round(d * scale), 0, 65535).astype(np.uint16)
    Image.fromarray(values).save(path, format="PNG")


def check_pair(image: np.ndarray, depth: np.ndarray, rgb_path: Path | str, depth_path: Path | str) -> None:
    """Refuse an image and depth map of different sizes, naming both files."""
    if image.shape[:2] != depth.shape[:2]:
        raise DataError(
            f"{depth_path}: depth map is {depth.shape[0]}x{depth.shape[1]} but image {rgb_path} is "
            f"{image.shape[0]}x{image.shape[1]} (height x width); they must match"
        )


def check_valid_depth(depth: np.ndarray, path: Path | str, min_depth: float, max_depth: float) -> None:
    """Refuse a depth map without a single pixel in (min_depth, max_depth].

    Such a frame contributes nothing to the metrics and makes the SILog loss NaN (mean over an empty
    mask), so it is better reported by name than trained on.
    """
    if not np.any((depth > min_depth) & (depth <= max_depth)):
        raise DataError(
            f"{path}: depth map has no valid pixel (none in ({min_depth:g}, {max_depth:g}] m); "
            "remove it from the split list"
        )


@dataclass(frozen=True)
class ListEntry:
    """One line of a BTS-style split list: ``rgb_path depth_path [focal]``."""

    line_no: int
    rgb: str
    depth: str | None
    focal: float


def _inside_root(relative: str, list_path: Path, line_no: int) -> str:
    """``relative`` unchanged, or a DataError when it climbs out of the folder it is relative to.

    Checked on the text (``..`` after normalisation), not by resolving symbolic links: dataset folders
    are often links to other disks, and those are the user's choice, while ``../../etc/passwd`` in a
    downloaded list is not.
    """
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../"):
        raise DataError(
            f"{list_path}:{line_no}: path {relative!r} leaves the data root (it resolves outside the folder "
            "the list's paths are relative to); refusing it"
        )
    return relative


def read_split_list(path: str | Path, default_focal: float) -> list[ListEntry]:
    """Parse a BTS split list. Leading ``/`` is stripped (the NYU train list has it); ``None`` depth kept.

    Paths that climb out of the data root (``../../etc/passwd``) and lines that are not UTF-8 are
    errors naming the list and the line.

    A malformed line is an error naming the list and the line number, because silently dropping it
    would shrink the dataset without anyone noticing.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: split list is missing")
    entries: list[ListEntry] = []
    with open(p, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{p}:{line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "a split list must be UTF-8 (or ASCII)"
                ) from None
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (2, 3):
                raise DataError(
                    f"{p}:{line_no}: expected 'rgb_path depth_path focal', got {len(fields)} fields"
                )
            focal = default_focal
            if len(fields) == 3:
                try:
                    focal = float(fields[2])
                except ValueError:
                    raise DataError(f"{p}:{line_no}: focal {fields[2]!r} is not a number") from None
            depth = None if fields[1] == "None" else _inside_root(fields[1].lstrip("/"), p, line_no)
            entries.append(ListEntry(line_no, _inside_root(fields[0].lstrip("/"), p, line_no), depth, focal))
    if not entries:
        raise DataError(f"{p}: split list is empty")
    return entries


def read_manifest(root: str | Path) -> dict | None:
    """Return the parsed manifest of a root written by our tools, or None when there is none."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable dataset manifest ({exc})") from None


def crop_box_bottom_centre(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """(top, left) of a crop that keeps the bottom rows and the horizontal centre (the KB crop rule)."""
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} larger than frame {height}x{width}")
    return height - crop_h, (width - crop_w) // 2
