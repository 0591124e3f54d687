"""KITTI Eigen reader on tiny datasets in the real layout (raw drives + annotated depth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdepth.data import KITTI, KITTIEigen, kb_crop
from clipdepth.data.kitti import kb_crop_size

DATE = "2011_09_26"


def write_kitti_frame(
    raw: Path,
    depth_root: Path | None,
    drive: str,
    frame: int,
    size: tuple[int, int],
    sub: str = "",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """One left-camera frame; returns (rgb uint8, depth uint16, list line)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 7) % 256, (yy * 5) % 256, np.full_like(xx, 17 + seed)], -1).astype(np.uint8)
    depth = (yy * 100 + xx % 97 + 256).astype(np.uint16)
    depth[rng.random((h, w)) < 0.5] = 0
    img_rel = f"{DATE}/{DATE}_drive_{drive}_sync/image_02/data/{frame:010d}.png"
    gt_rel = f"{DATE}_drive_{drive}_sync/proj_depth/groundtruth/image_02/{frame:010d}.png"
    (raw / img_rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(raw / img_rel)
    if depth_root is not None:
        out = depth_root / sub / gt_rel
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth).save(out)
    return rgb, depth, f"{img_rel} {gt_rel} 721.5377"


def test_kb_crop_size_rule():
    assert kb_crop_size(375, 1242) == (352, 1216)
    assert kb_crop_size(370, 1224) == (352, 1216)
    assert kb_crop_size(100, 330) == (96, 320)  # reduced frames: largest multiples of 32
    with pytest.raises(ValueError):
        kb_crop_size(20, 20)
    a = np.arange(376 * 1241).reshape(376, 1241)
    c = kb_crop(a)
    assert c.shape == (352, 1216)
    assert c[0, 0] == a[24, 12] and c[-1, -1] == a[375, 1227]  # top = 376-352, left = (1241-1216)//2


def test_eigen_layout_train_val_none_and_crop(tmp_path):
    raw = tmp_path / "kitti"
    gt = raw / "data_depth_annotated"
    full = (376, 1241)
    rgb0, d0, line0 = write_kitti_frame(raw, gt, "0002", 69, full, sub="val", seed=1)
    _, _, line_none = write_kitti_frame(raw, None, "0002", 70, full, seed=2)
    none_line = line_none.split()[0] + " None 721.5377"
    rgb2, d2, line2 = write_kitti_frame(raw, gt, "0009", 3, full, sub="train", seed=3)
    right = line2.replace("image_02", "image_03")
    (tmp_path / "eigen_test.txt").write_text("\n".join([line0, none_line, line2, right]) + "\n")

    ds = KITTIEigen(raw, split="test", split_file=tmp_path / "eigen_test.txt")
    assert len(ds) == 2
    assert ds.skipped == 2
    assert ds.skip_reasons == {"no ground truth": 1, "right camera": 1}
    assert [ln for ln, _ in ds.skipped_lines] == [2, 4]
    s = ds[0]
    assert s.name == f"{DATE}_drive_0002_sync/image_02/0000000069"
    assert s.image.shape == (352, 1216, 3) and s.depth.shape == (352, 1216)
    assert s.focal == pytest.approx(721.5377)
    # KB crop: rows 24:376, cols 12:1228; depth = PNG / 256
    np.testing.assert_array_equal(s.depth, d0[24:376, 12:1228].astype(np.float32) / 256)
    np.testing.assert_array_equal(s.image, rgb0[24:376, 12:1228].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds[1].depth, d2[24:376, 12:1228].astype(np.float32) / 256)
    uncropped = KITTIEigen(raw, gt, "test", tmp_path / "eigen_test.txt", crop=False)
    assert uncropped[0].depth.shape == full


def test_merged_depth_folder_and_explicit_depth_root(tmp_path):
    raw, gt = tmp_path / "raw", tmp_path / "elsewhere" / "annotated"
    raw.mkdir()
    _, d, line = write_kitti_frame(raw, gt, "0005", 1, (100, 330))  # merged: no train/ or val/
    (tmp_path / "list.txt").write_text(line + "\n")
    ds = KITTIEigen(raw, gt, "train", tmp_path / "list.txt")
    s = ds[0]
    assert s.depth.shape == (96, 320)  # reduced frame: multiple-of-32 crop, bottom aligned, centred
    np.testing.assert_array_equal(s.depth, d[4:100, 5:325].astype(np.float32) / 256)


def test_spec_values():
    assert (KITTI.min_depth, KITTI.max_depth, KITTI.depth_scale) == (1e-3, 80.0, 256.0)
    assert (
        KITTI.train_crop == (352, 704) and KITTI.test_size == (352, 1216) and KITTI.eval_crop == "garg_kitti"
    )
