"""Procedural scenes: exact geometry, determinism, real-layout round trip, caching, monocular cues."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from clipdepth.data import KITTIEigen, NYUDepthV2, ensure_synthetic_dataset, render, write_synthetic_dataset
from clipdepth.data import synthetic as syn
from clipdepth.data.common import MANIFEST_NAME, read_manifest

FX_NYU, FY_NYU, CX_NYU, CY_NYU = 518.8579, 519.4696, 325.5824, 253.7362
FY_KITTI, CY_KITTI = 721.5377, 172.8540


def _plain():
    return syn._Material((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_ground_plane_depth_is_exact():
    cam = syn._Camera.make("outdoor", (375, 1242), 0.0, 0.0, 0.0, np.array([0.0, 1.65, 0.0]))
    t, sid, *_ = syn._trace(syn._Scene(cam, ground=_plain()))
    for row in (200, 300, 374):
        expected = FY_KITTI * 1.65 / (row - CY_KITTI)  # z = f * h / (v - cy)
        assert t[row, 600] == pytest.approx(expected, rel=1e-5)
        assert np.all(t[row] == t[row, 0])  # a level camera sees constant depth along a row
    assert np.all(sid[:172] == -1) and np.all(np.isinf(t[:172]))  # above the horizon: nothing


def test_room_and_box_depth_are_exact():
    cam = syn._Camera.make("indoor", (480, 640), 0.0, 0.0, 0.0, np.array([0.0, 1.5, 1.0]))
    scene = syn._Scene(
        cam, room=(np.array([-2.0, 0.0, 0.0]), np.array([2.0, 3.0, 6.0])), room_materials=[_plain()] * 6
    )
    scene.boxes.append(syn._Box(np.array([0.0, 1.5, 3.0]), np.array([0.5, 0.5, 0.5]), 0.0, _plain()))
    t, sid, axis, sign, _ = syn._trace(scene)
    r, c = round(CY_NYU), round(CX_NYU)
    assert t[r, c] == pytest.approx(1.5, rel=1e-6) and sid[r, c] == 6  # box front face at z = 2.5
    assert axis[r, c] == 2 and sign[r, c] == -1  # face normal points back at the camera
    # back wall z = 6 is visible 173..207 px beside the centre (box edge fx*0.5/1.5, wall edge fx*2/5)
    assert t[r, c - 190] == pytest.approx(5.0, rel=1e-6) and sid[r, c - 190] == 5
    assert sid[r, c - 215] == 0  # beyond that: the left wall
    assert t[470, c] == pytest.approx(FY_NYU * 1.5 / (470 - CY_NYU), rel=1e-5) and sid[470, c] == 2  # floor
    assert t[5, c] == pytest.approx(FY_NYU * 1.5 / (CY_NYU - 5), rel=1e-5) and sid[5, c] == 3  # ceiling
    # box silhouette: x in [-0.5, 0.5] at z-depth 1.5 -> columns cx +- fx * 0.5 / 1.5
    half_w = FX_NYU * 0.5 / 1.5
    assert sid[r, int(CX_NYU + half_w) - 1] == 6 and sid[r, int(CX_NYU + half_w) + 2] == 5


@pytest.mark.parametrize("family,size", [("indoor", (60, 80)), ("outdoor", (48, 160))])
def test_deterministic_same_bytes(family, size):
    a, b = render(family, 3, 7, size), render(family, 3, 7, size)
    assert a.image.tobytes() == b.image.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    assert render(family, 3, 8, size).depth.tobytes() != a.depth.tobytes()
    assert render(family, 4, 7, size).depth.tobytes() != a.depth.tobytes()
    assert a.image.dtype == np.float32 and a.image.shape == (*size, 3)
    assert a.image.min() >= 0 and a.image.max() <= 1


def test_indoor_full_size_range():
    s = render("indoor", 0, 0)
    assert s.image.shape == (480, 640, 3) and s.focal == pytest.approx(FX_NYU)
    valid = s.depth[s.depth > 0]
    assert valid.size > 0.95 * s.depth.size
    assert 0.3 < valid.min() and valid.max() <= 10.0


def test_outdoor_full_size_sky_and_range():
    s = render("outdoor", 0, 0)
    assert s.image.shape == (375, 1242, 3) and s.focal == pytest.approx(721.5377)
    assert (s.depth[0] == 0).any()  # sky: no ground truth
    assert np.all(s.depth[-1] > 0)  # road in front of the car
    valid = s.depth[s.depth > 0]
    assert 1.0 < valid.min() and valid.max() <= 80.0
    sparse = render("outdoor", 0, 0, lidar=True)
    keep = sparse.depth > 0
    assert 0.005 < keep.mean() < 0.15  # scan lines only
    np.testing.assert_array_equal(sparse.depth[keep], s.depth[keep])
    np.testing.assert_array_equal(sparse.image, s.image)


def test_reduced_size_is_the_same_scene():
    full, small = render("indoor", 1, 2), render("indoor", 1, 2, (120, 160))
    assert small.focal == pytest.approx(FX_NYU / 4)
    # small pixel (i, j) centre sits at full-resolution coordinate (4i + 1.5, 4j + 1.5)
    sampled = full.depth[1::4, 1::4]
    rel = np.abs(small.depth - sampled) / sampled
    assert np.median(rel) < 0.01


def _png_metres(depth, scale):
    """What the readers return for a depth map written as round(depth * scale) in a uint16 PNG."""
    return np.round(depth.astype(np.float64) * scale).astype(np.uint16).astype(np.float32) / np.float32(scale)


def _sha_tree(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_indoor_written_in_nyu_layout_and_read_back(tmp_path):
    root = write_synthetic_dataset("indoor", tmp_path / "nyu", n_train=3, n_test=2, seed=5, size=(48, 64))
    train, test = NYUDepthV2(root, "train"), NYUDepthV2(root, "test")
    assert (len(train), len(test)) == (3, 2)
    assert test.names() == ["synth_indoor_test/rgb_00000", "synth_indoor_test/rgb_00001"]
    assert (root / "sync/synth_indoor_train/rgb_00002.jpg").is_file()
    assert (
        (root / "nyudepthv2_train_files_with_gt.txt")
        .read_text()
        .startswith("/synth_indoor_train/rgb_00000.jpg")
    )
    for ds, index in ((train, 1), (test, syn.TEST_INDEX_OFFSET + 1)):
        ref = render("indoor", 5, index, (48, 64))
        got = ds[1]
        np.testing.assert_array_equal(got.depth, _png_metres(ref.depth, 1000))
        assert np.abs(got.image - ref.image).mean() < 0.02  # JPEG, as in the real layout
        assert got.focal == pytest.approx(ref.focal, abs=1e-4)
    again = write_synthetic_dataset("indoor", tmp_path / "nyu2", n_train=3, n_test=2, seed=5, size=(48, 64))
    assert _sha_tree(root) == _sha_tree(again)  # same parameters, same bytes on disk


def test_outdoor_written_in_kitti_layout_and_read_back(tmp_path):
    root = write_synthetic_dataset("outdoor", tmp_path / "kitti", n_train=1, n_test=2, seed=2, size=(64, 200))
    assert (root / "data_depth_annotated/val").is_dir() and (root / "data_depth_annotated/train").is_dir()
    test = KITTIEigen(root, split="test")
    assert len(test) == 2 and test.skipped == 0
    assert len(KITTIEigen(root, split="train")) == 1
    ref = render("outdoor", 2, syn.TEST_INDEX_OFFSET + 0, (64, 200))
    got = test[0]
    assert got.depth.shape == (64, 192)  # reduced frame: multiple-of-32 crop, cols 4:196
    np.testing.assert_array_equal(got.depth, _png_metres(ref.depth, 256)[:, 4:196])
    np.testing.assert_array_equal(got.image, np.round(ref.image * 255)[:, 4:196].astype(np.float32) / 255)


def test_ensure_reuses_complete_copy_and_writes_atomically(tmp_path, monkeypatch):
    out = tmp_path / "data" / "indoor"
    ensure_synthetic_dataset("indoor", out, 2, 1, seed=0, size=(32, 48))
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["n_train"] == 2 and manifest["size"] == [32, 48]
    stamp = (out / MANIFEST_NAME).stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise RuntimeError("render called")

    monkeypatch.setattr(syn, "render_indoor", boom)
    assert ensure_synthetic_dataset("indoor", out, 2, 1, seed=0, size=(32, 48)) == out  # no rendering
    assert (out / MANIFEST_NAME).stat().st_mtime_ns == stamp
    # different parameters must re-render; a failure leaves the old copy intact and no temp folders
    with pytest.raises(RuntimeError, match="render called"):
        ensure_synthetic_dataset("indoor", out, 3, 1, seed=0, size=(32, 48))
    assert read_manifest(out)["n_train"] == 2
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == ["indoor"]
    monkeypatch.undo()
    ensure_synthetic_dataset("indoor", out, 3, 1, seed=0, size=(32, 48))
    assert read_manifest(out)["n_train"] == 3 and len(NYUDepthV2(out, "train")) == 3
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == ["indoor"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown family"):
        render("underwater", 0, 0)
    with pytest.raises(ValueError, match="size must be between"):
        render("indoor", 0, 0, (500, 640))


@pytest.mark.parametrize("family,size", [("indoor", (48, 64)), ("outdoor", (48, 160))])
def test_ridge_on_pixels_beats_constant_mean(family, size):
    """Monocular cues: ridge on downsampled pixels predicts held-out depth far better than the mean."""
    from sklearn.linear_model import Ridge

    def down(a, f=4):
        h, w = a.shape[:2]
        return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))

    train = [render(family, 0, i, size) for i in range(40)]
    test = [render(family, 0, syn.TEST_INDEX_OFFSET + i, size) for i in range(12)]
    x_tr = np.stack([down(s.image).ravel() for s in train])
    y_tr = np.stack([down(s.depth).ravel() for s in train])
    x_te = np.stack([down(s.image).ravel() for s in test])
    y_te = np.stack([down(s.depth).ravel() for s in test])
    pred = Ridge(alpha=10.0).fit(x_tr, y_tr).predict(x_te)
    rmse_ridge = float(np.sqrt(np.mean((pred - y_te) ** 2)))
    rmse_mean = float(np.sqrt(np.mean((y_tr.mean() - y_te) ** 2)))
    rmse_position = float(np.sqrt(np.mean((y_tr.mean(axis=0) - y_te) ** 2)))  # per-pixel mean map
    margin = 1 - rmse_ridge / rmse_mean
    print(
        f"\n{family}: RMSE ridge {rmse_ridge:.3f} m, constant mean {rmse_mean:.3f} m "
        f"(margin {100 * margin:.0f}%), per-position mean {rmse_position:.3f} m"
    )
    assert margin > 0.3
    assert rmse_ridge < rmse_position  # the pixels add information beyond the position prior
