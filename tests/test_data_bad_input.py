"""Every bad-input case gives one DataError naming the file and the problem (or a counted skip)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from clipdepth.data import DataError, KITTIEigen, NYUDepthV2, NYULabeledMat
from clipdepth.data.common import MANIFEST_NAME
from clipdepth.data.splits import get_split_file


def nyu_root(
    tmp_path: Path, rgb_size=(6, 8), depth_size=(6, 8), depth_mm=None, depth_dtype=np.uint16
) -> Path:
    root = tmp_path / "nyu"
    scene = root / "official_splits/test/kitchen"
    scene.mkdir(parents=True)
    Image.fromarray(np.full((*rgb_size, 3), 128, np.uint8)).save(scene / "rgb_00001.jpg")
    if depth_mm is None:
        depth_mm = np.full(depth_size, 2500)
    Image.fromarray(np.asarray(depth_mm).astype(depth_dtype)).save(scene / "sync_depth_00001.png")
    (root / "list.txt").write_text("kitchen/rgb_00001.jpg kitchen/sync_depth_00001.png 518.8579\n")
    return root


def test_good_fixture_reads(tmp_path):
    root = nyu_root(tmp_path)
    assert NYUDepthV2(root, "test", root / "list.txt")[0].depth.max() == pytest.approx(2.5)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"nope: NYU Depth v2 root does not exist"):
        NYUDepthV2(tmp_path / "nope", "test", split_file=tmp_path / "list.txt")
    with pytest.raises(DataError, match=r"absent: KITTI raw root does not exist"):
        KITTIEigen(tmp_path / "absent")


def test_list_line_pointing_at_missing_file(tmp_path):
    root = nyu_root(tmp_path)
    with open(root / "list.txt", "a") as fh:
        fh.write("kitchen/rgb_00002.jpg kitchen/sync_depth_00002.png 518.8579\n")
    with pytest.raises(
        DataError,
        match=r"list\.txt: 2 listed file\(s\) are missing; .*\n  line 2: .*"
        r"kitchen/rgb_00002\.jpg\n  line 2: .*kitchen/sync_depth_00002\.png",
    ):
        NYUDepthV2(root, "test", root / "list.txt")
    # where skipping is wanted, the line is skipped and counted
    ds = NYUDepthV2(root, "test", root / "list.txt", on_missing="skip")
    assert len(ds) == 1 and ds.skip_reasons == {"missing file": 1}
    assert [str(p) for p in ds.missing] == [
        str(root / "official_splits/test/kitchen/rgb_00002.jpg"),
        str(root / "official_splits/test/kitchen/sync_depth_00002.png"),
    ]


@pytest.mark.parametrize("name", ["rgb_00001.jpg", "sync_depth_00001.png"])
def test_truncated_image_files(tmp_path, name):
    root = nyu_root(
        tmp_path,
        rgb_size=(64, 64),
        depth_size=(64, 64),
        depth_mm=np.random.default_rng(0).integers(1, 9000, (64, 64)),
    )
    path = root / "official_splits/test/kitchen" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = NYUDepthV2(root, "test", root / "list.txt")
    with pytest.raises(DataError, match=rf"kitchen/{name}: cannot decode .*corrupt or truncated"):
        ds[0]


@pytest.mark.parametrize("name", ["rgb_00001.jpg", "sync_depth_00001.png"])
def test_corrupt_image_files(tmp_path, name):
    root = nyu_root(tmp_path)
    (root / "official_splits/test/kitchen" / name).write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=rf"kitchen/{name}: cannot decode .*corrupt or truncated"):
        NYUDepthV2(root, "test", root / "list.txt")[0]


def test_eight_bit_depth_png(tmp_path):
    root = nyu_root(tmp_path, depth_mm=np.full((6, 8), 200), depth_dtype=np.uint8)
    with pytest.raises(
        DataError,
        match=r"sync_depth_00001\.png: depth PNG has mode 'L' \(8-bit or colour\); "
        r"expected a 16-bit",
    ):
        NYUDepthV2(root, "test", root / "list.txt")[0]


def test_rgb_depth_size_mismatch(tmp_path):
    root = nyu_root(tmp_path, rgb_size=(6, 8), depth_size=(6, 9))
    with pytest.raises(
        DataError,
        match=r"sync_depth_00001\.png: depth map is 6x9 but image .*rgb_00001\.jpg "
        r"is 6x8 .*must match",
    ):
        NYUDepthV2(root, "test", root / "list.txt")[0]


def test_depth_without_valid_pixel(tmp_path):
    root = nyu_root(tmp_path, depth_mm=np.zeros((6, 8)))
    with pytest.raises(DataError, match=r"sync_depth_00001\.png: depth map has no valid pixel"):
        NYUDepthV2(root, "test", root / "list.txt")[0]


def test_kitti_depth_without_valid_pixel_after_crop(tmp_path):
    raw = tmp_path / "raw"
    img = raw / "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png"
    gt = (
        raw / "data_depth_annotated/2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/0000000000.png"
    )
    img.parent.mkdir(parents=True)
    gt.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(img)
    depth = np.zeros((40, 70), np.uint16)
    depth[0:5] = 2560  # only in the rows the bottom-aligned crop (32x64) removes
    Image.fromarray(depth).save(gt)
    (tmp_path / "l.txt").write_text(
        f"{img.relative_to(raw)} {gt.relative_to(raw / 'data_depth_annotated')} 7\n"
    )
    with pytest.raises(DataError, match=r"0000000000\.png: depth map has no valid pixel"):
        KITTIEigen(raw, split="test", split_file=tmp_path / "l.txt")[0]


def test_malformed_list_line(tmp_path):
    root = nyu_root(tmp_path)
    (root / "list.txt").write_text("kitchen/rgb_00001.jpg\n")
    with pytest.raises(DataError, match=r"list\.txt:1: expected 'rgb_path depth_path focal', got 1 fields"):
        NYUDepthV2(root, "test", root / "list.txt")
    (root / "list.txt").write_text("a.jpg b.png f=518\n")
    with pytest.raises(DataError, match=r"list\.txt:1: focal 'f=518' is not a number"):
        NYUDepthV2(root, "test", root / "list.txt")


def test_mat_without_expected_datasets(tmp_path):
    path = tmp_path / "labeled.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 3, 8, 6), np.uint8))
        f.create_dataset("labels", data=np.zeros((2, 8, 6), np.uint16))
    with pytest.raises(
        DataError, match=r"labeled\.mat: missing dataset 'rawDepths' \(found: \['images', 'labels'\]\)"
    ):
        NYULabeledMat(path, split="all")
    with h5py.File(path, "a") as f:
        f.create_dataset("rawDepths", data=np.zeros((2, 8, 5), np.float32))
    with pytest.raises(
        DataError, match=r"labeled\.mat: 'rawDepths' has shape \(2, 8, 5\); expected \(2, 8, 6\)"
    ):
        NYULabeledMat(path, split="all")


def test_splits_mat_without_indices(tmp_path):
    path = tmp_path / "labeled.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 3, 8, 6), np.uint8))
        f.create_dataset("rawDepths", data=np.ones((2, 8, 6), np.float32))
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1]])})
    with pytest.raises(DataError, match=r"splits\.mat: splits file has no variable 'testNdxs'"):
        NYULabeledMat(path, tmp_path / "splits.mat", "test")
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1]]), "testNdxs": np.array([[3]])})
    with pytest.raises(DataError, match=r"splits\.mat: index 3 \(1-based\) outside the 2 frames"):
        NYULabeledMat(path, tmp_path / "splits.mat", "test")


def test_split_file_with_wrong_checksum(tmp_path):
    bad = tmp_path / "nyudepthv2_test_files_with_gt.txt"
    bad.write_text("bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579\n")
    got = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(
        DataError,
        match=rf"nyudepthv2_test_files_with_gt\.txt: split list checksum mismatch: "
        rf"SHA-256 {got} does not match the canonical BTS list",
    ):
        get_split_file("nyudepthv2_test_files_with_gt.txt", local=bad)


def test_canonical_name_in_root_is_checked_against_canonical_sha(tmp_path):
    root = nyu_root(tmp_path)
    (root / "nyudepthv2_test_files_with_gt.txt").write_text((root / "list.txt").read_text())
    with pytest.raises(DataError, match=r"checksum mismatch: .* canonical BTS list .*e92c191d5835a225"):
        NYUDepthV2(root, "test")


def test_list_edited_after_manifest(tmp_path):
    root = nyu_root(tmp_path)
    (root / MANIFEST_NAME).write_text(
        json.dumps({"splits": {"test": {"file": "list.txt", "sha256": "0" * 64}}})
    )
    with pytest.raises(
        DataError,
        match=r"list\.txt: split list checksum mismatch: .* recorded in .*"
        + MANIFEST_NAME.replace(".", r"\."),
    ):
        NYUDepthV2(root, "test")


def test_no_split_list_offline_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "bare"
    root.mkdir()
    with pytest.raises(
        DataError,
        match=r"nyudepthv2_train_files_with_gt\.txt is not available locally: download "
        r"https://raw\.githubusercontent\.com/cleinc/bts/master/train_test_inputs/",
    ):
        NYUDepthV2(root, "train", fetch=False)
