"""NYU Depth v2 readers on tiny datasets written in the real layouts (BTS folders, labeled .mat)."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from clipdepth.data import NYU, NYU_BORDER_CROP, DataError, NYUDepthV2, NYULabeledMat, export_official_test
from clipdepth.data.nyu import load_official_splits

FOCAL = "518.8579"


def _write_frame(folder: Path, stem_rgb: str, stem_depth: str, rgb: np.ndarray, depth_mm: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / stem_rgb, quality=95)
    Image.fromarray(depth_mm.astype(np.uint16)).save(folder / stem_depth)


def make_bts_nyu(root: Path) -> dict:
    """Two train frames (list paths with a leading '/') and two test frames in the BTS layout."""
    rng = np.random.default_rng(0)
    frames = {}
    lines = {"train": [], "test": []}
    for split, scene, idx in (
        ("train", "kitchen_0028b", 45),
        ("train", "office_0003", 7),
        ("test", "bathroom", 45),
        ("test", "bedroom", 59),
    ):
        base = root / ("sync" if split == "train" else "official_splits/test") / scene
        rgb = np.full((6, 8, 3), (40 + idx, 100, 200), dtype=np.uint8)
        depth_mm = rng.integers(500, 9000, size=(6, 8)).astype(np.uint16)
        depth_mm[0, 0] = 0  # a hole
        _write_frame(base, f"rgb_{idx:05d}.jpg", f"sync_depth_{idx:05d}.png", rgb, depth_mm)
        prefix = "/" if split == "train" else ""
        lines[split].append(
            f"{prefix}{scene}/rgb_{idx:05d}.jpg {prefix}{scene}/sync_depth_{idx:05d}.png {FOCAL}"
        )
        frames[f"{scene}/rgb_{idx:05d}"] = (rgb, depth_mm, base / f"rgb_{idx:05d}.jpg")
    for split in ("train", "test"):
        (root / f"my_{split}_list.txt").write_text("\n".join(lines[split]) + "\n")
    return frames


def test_bts_layout_reads_back_metres_names_and_focal(tmp_path):
    frames = make_bts_nyu(tmp_path)
    for split, expected_names in (
        ("train", ["kitchen_0028b/rgb_00045", "office_0003/rgb_00007"]),
        ("test", ["bathroom/rgb_00045", "bedroom/rgb_00059"]),
    ):
        ds = NYUDepthV2(tmp_path, split, split_file=tmp_path / f"my_{split}_list.txt")
        assert len(ds) == 2 and ds.skipped == 0
        assert ds.names() == expected_names
        for i, name in enumerate(expected_names):
            s = ds[i]
            rgb, depth_mm, rgb_path = frames[name]
            assert s.name == name
            assert s.focal == pytest.approx(518.8579)
            assert s.image.dtype == np.float32 and s.image.shape == (6, 8, 3)
            assert s.depth.dtype == np.float32 and s.depth.shape == (6, 8)
            # metres = PNG value / 1000, exactly; hole stays 0
            np.testing.assert_array_equal(s.depth, depth_mm.astype(np.float32) / np.float32(1000))
            assert s.depth[0, 0] == 0
            # image = decoded JPEG / 255, and close to what was encoded
            decoded = np.asarray(Image.open(rgb_path).convert("RGB"), dtype=np.float32) / 255
            np.testing.assert_array_equal(s.image, decoded)
            assert np.abs(s.image * 255 - rgb).max() <= 3


def test_depth_value_hand_computed(tmp_path):
    base = tmp_path / "official_splits/test/study"
    depth = np.array([[1234, 0], [10000, 65535]], dtype=np.uint16)
    _write_frame(base, "rgb_00001.jpg", "sync_depth_00001.png", np.zeros((2, 2, 3), np.uint8), depth)
    (tmp_path / "list.txt").write_text("study/rgb_00001.jpg study/sync_depth_00001.png 500.5\n")
    s = NYUDepthV2(tmp_path, "test", tmp_path / "list.txt")[0]
    np.testing.assert_allclose(s.depth, [[1.234, 0.0], [10.0, 65.535]], rtol=1e-6)
    assert s.focal == 500.5


def test_border_crop_constant_and_spec():
    assert NYU_BORDER_CROP == (43, 45, 608, 472)
    assert (NYU.min_depth, NYU.max_depth, NYU.depth_scale) == (1e-3, 10.0, 1000.0)
    assert NYU.train_crop == (416, 544) and NYU.test_size == (480, 640) and NYU.eval_crop == "eigen_nyu"


def test_canonical_list_in_root_is_used_through_manifest(tmp_path):
    make_bts_nyu(tmp_path)
    # a list under its canonical name needs the manifest to vouch for it (else: canonical checksum)
    from clipdepth.data.common import sha256_file
    from clipdepth.data.nyu import update_manifest

    canonical = tmp_path / "nyudepthv2_test_files_with_gt.txt"
    canonical.write_text((tmp_path / "my_test_list.txt").read_text())
    update_manifest(
        tmp_path, {"splits": {"test": {"file": canonical.name, "sha256": sha256_file(canonical)}}}
    )
    ds = NYUDepthV2(tmp_path, "test")
    assert ds.split_file == canonical and len(ds) == 2


# ------------------------------------------------------------------------------------------------
# Original release: labeled .mat (HDF5, MATLAB layout) + splits.mat
# ------------------------------------------------------------------------------------------------

H, W, N = 24, 32, 4
SCENES = ["kitchen", "bathroom", "kitchen", "living_room"]


def make_labeled_mat(path: Path, with_scenes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A tiny nyu_depth_v2_labeled.mat: MATLAB v7.3 stores HxWxCxN column-major, h5py sees (N,C,W,H)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)  # natural (N, H, W, 3)
    raw = rng.uniform(0.5, 9.5, size=(N, H, W)).astype(np.float32)
    raw[:, 0, :3] = 0  # holes
    raw[0, 5, 5] = np.float32(2.0006)  # truncates to 2000 mm
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1))
        f.create_dataset("rawDepths", data=raw.transpose(0, 2, 1))
        f.create_dataset("depths", data=np.maximum(raw, 1.0).transpose(0, 2, 1))
        if with_scenes:
            refs = f.create_group("#refs#")
            ref_arr = np.empty((1, N), dtype=h5py.ref_dtype)
            for i, name in enumerate(SCENES):
                ds = refs.create_dataset(f"s{i}", data=np.array([[ord(c)] for c in name], dtype=np.uint16))
                ref_arr[0, i] = ds.ref
            f.create_dataset("sceneTypes", data=ref_arr, dtype=h5py.ref_dtype)
    return images, raw


def make_splits_mat(path: Path) -> None:
    scipy.io.savemat(path, {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2], [4]])})


def test_splits_mat_is_one_based(tmp_path):
    make_splits_mat(tmp_path / "splits.mat")
    splits = load_official_splits(tmp_path / "splits.mat")
    assert splits["train"].tolist() == [0, 2] and splits["test"].tolist() == [1, 3]


def test_labeled_mat_reader_raw_values(tmp_path):
    images, raw = make_labeled_mat(tmp_path / "labeled.mat")
    make_splits_mat(tmp_path / "splits.mat")
    ds = NYULabeledMat(tmp_path / "labeled.mat", tmp_path / "splits.mat", "train", bts_compatible=False)
    assert len(ds) == 2 and ds.indices.tolist() == [0, 2]
    s = ds[0]
    np.testing.assert_array_equal(s.image, images[0].astype(np.float32) / 255)  # transposed back to HxWx3
    np.testing.assert_array_equal(s.depth, raw[0])
    assert s.name == "kitchen/rgb_00000"
    filled = NYULabeledMat(
        tmp_path / "labeled.mat", tmp_path / "splits.mat", "train", depth="filled", bts_compatible=False
    )
    assert filled[0].depth.min() >= 1.0
    # pickling (data loader workers) drops and reopens the HDF5 handle
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1].depth, raw[2])


def test_labeled_mat_bts_mode_truncates_to_mm_and_blacks_border(tmp_path):
    _, raw = make_labeled_mat(tmp_path / "labeled.mat")
    ds = NYULabeledMat(tmp_path / "labeled.mat", split="all")
    s = ds[0]
    assert s.depth[5, 5] == pytest.approx(2.0)  # 2.0006 m -> 2000 mm (truncation, as BTS)
    assert np.all(s.depth[0, :3] == 0)
    np.testing.assert_array_equal(s.depth, np.floor(raw[0] * 1000).astype(np.float32) / 1000)
    # black border outside rows 7:474, cols 7:632 (JPEG rings a little at the edge of random content)
    assert s.image[:7].mean() < 0.03 and s.image[:, :7].mean() < 0.03
    assert s.image[7:, 7:].mean() > 0.3


def test_export_official_test_equals_mat_reader(tmp_path):
    make_labeled_mat(tmp_path / "labeled.mat")
    make_splits_mat(tmp_path / "splits.mat")
    out = tmp_path / "nyu_depth_v2"
    list_path = export_official_test(tmp_path / "labeled.mat", tmp_path / "splits.mat", out, progress=False)
    # BTS convention: folder = scene type, file number = 0-based frame index (splits are 1-based 2, 4)
    assert list_path.read_text().splitlines() == [
        f"bathroom/rgb_00001.jpg bathroom/sync_depth_00001.png {NYU.focal}",
        f"living_room/rgb_00003.jpg living_room/sync_depth_00003.png {NYU.focal}",
    ]
    assert (out / "official_splits/test/bathroom/sync_depth_00001.png").is_file()
    from_folder = NYUDepthV2(out, "test")  # list found through the manifest written by the exporter
    from_mat = NYULabeledMat(tmp_path / "labeled.mat", tmp_path / "splits.mat", "test")
    assert len(from_folder) == len(from_mat) == 2
    for i in range(2):
        a, b = from_folder[i], from_mat[i]
        assert a.name == b.name and a.focal == pytest.approx(b.focal)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.depth, b.depth)


def test_mat_without_scene_types_uses_placeholder(tmp_path):
    make_labeled_mat(tmp_path / "labeled.mat", with_scenes=False)
    assert NYULabeledMat(tmp_path / "labeled.mat", split="all")[1].name == "scene/rgb_00001"


def test_mat_reader_refuses_non_hdf5(tmp_path):
    scipy.io.savemat(tmp_path / "old.mat", {"images": np.zeros((2, 2))})
    with pytest.raises(DataError, match=r"old\.mat: not a MATLAB v7\.3 \(HDF5\) file"):
        NYULabeledMat(tmp_path / "old.mat", split="all")
