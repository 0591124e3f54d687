"""KITTI, Eigen split with the BTS file lists.

Layout (the BTS/AdaBins convention: annotated depth inside the raw root by default)::

    raw_root/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
    depth_root/[train|val/]2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png

``depth_root`` defaults to ``raw_root/data_depth_annotated``. The official depth release splits
drives into ``train/`` and ``val/``; a merged folder works too: each listed depth path is looked up
directly under ``depth_root`` first, then under ``train/`` and ``val/``. Depth PNGs are uint16
value / 256 = metres, 0 = no LiDAR return. Lines whose depth is ``None`` (45 of the 697 Eigen test
lines) are skipped and counted, as are right-camera (``image_03``) lines: the paper uses the left
camera only.

Every frame is cropped with the KB crop, 352x1216, bottom-aligned and horizontally centred (frames
are 370-376 x 1224-1242). Frames smaller than that (the reduced-size synthetic demo scenes) are
cropped to the largest multiple of 32 in each dimension with the same alignment, so that the input
is still divisible by the backbone's stride; see :func:`kb_crop_size`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipdepth.data.base import ListDataset, Resolved
from clipdepth.data.common import ListEntry, crop_box_bottom_centre, require_dir
from clipdepth.data.specs import KB_CROP, KITTI

__all__ = ["KITTIEigen", "kb_crop", "kb_crop_size"]


def kb_crop_size(height: int, width: int) -> tuple[int, int]:
    """Crop size for a frame: 352x1216 when it fits, else the largest multiples of 32 that fit."""
    if height >= KB_CROP[0] and width >= KB_CROP[1]:
        return KB_CROP
    h, w = (height // 32) * 32, (width // 32) * 32
    if h == 0 or w == 0:
        raise ValueError(f"frame {height}x{width} is too small for a multiple-of-32 crop")
    return h, w


def kb_crop(array: np.ndarray) -> np.ndarray:
    """Apply the KB crop (bottom-aligned, horizontally centred) to an HxW or HxWxC array."""
    h, w = array.shape[:2]
    ch, cw = kb_crop_size(h, w)
    top, left = crop_box_bottom_centre(h, w, ch, cw)
    return array[top : top + ch, left : left + cw]


class KITTIEigen(ListDataset):
    """KITTI Eigen split from BTS lists; samples are KB-cropped image and depth (see module docstring).

    ``crop=False`` returns full frames (for visualisation). :attr:`skipped` counts lines without
    ground truth; :attr:`skip_reasons` breaks that down. ``subset=N`` reads only the first N lines of
    the list; ``None`` lines among them are skipped and counted as usual.
    """

    spec = KITTI

    def __init__(
        self,
        raw_root: str | Path,
        depth_root: str | Path | None = None,
        split: str = "test",
        split_file: str | Path | None = None,
        *,
        crop: bool = True,
        on_missing: str = "error",
        fetch: bool = True,
        subset: int | None = None,
    ) -> None:
        self.raw_root = require_dir(raw_root, "KITTI raw root")
        self.depth_root = require_dir(
            depth_root if depth_root is not None else self.raw_root / "data_depth_annotated",
            "KITTI annotated depth root",
        )
        self.crop = crop
        super().__init__(self.raw_root, split, split_file, on_missing=on_missing, fetch=fetch, subset=subset)

    def _skip_reason(self, entry: ListEntry) -> str | None:
        if "/image_03/" in f"/{entry.rgb}":
            return "right camera"
        return super()._skip_reason(entry)

    def _resolve(self, entry: ListEntry) -> Resolved:
        assert entry.depth is not None
        candidates = tuple(
            base / entry.depth
            for base in (self.depth_root, self.depth_root / "train", self.depth_root / "val")
        )
        depth = next((c for c in candidates if c.is_file()), candidates[0])
        return Resolved(entry, self.raw_root / entry.rgb, depth, candidates)

    def _describe_missing(self, item: Resolved, path: Path) -> str:
        if path == item.depth and item.depth_candidates:
            return f"{path} (also looked under {self.depth_root / 'train'} and {self.depth_root / 'val'})"
        return str(path)

    def _crop(self, image: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.crop:
            return image, depth
        return kb_crop(image), kb_crop(depth)

    def _name(self, entry: ListEntry) -> str:
        # 2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png -> drive/image_02/frame
        parts = entry.rgb.rsplit(".", 1)[0].split("/")
        return "/".join(p for p in parts[1:] if p != "data") if len(parts) > 1 else parts[0]
