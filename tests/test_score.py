"""``clipdepth score`` (issue 14): exact per-image equality with compute_metrics for every protocol and
prediction format, pixel-pooled averages against a direct numpy computation, the new metrics pieces
(eigen_kitti crop, pixel sums) against hand-worked values, and one-line errors for bad inputs.

Ground truth is written in the real layouts (NYU BTS folders at 480 x 640; KITTI raw drives at
375 x 1242 with annotated depth) and read back by the real readers inside the scorer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipdepth.data import NYUDepthV2
from clipdepth.data.common import read_depth_png, write_depth_png
from clipdepth.eval.metrics import METRIC_NAMES, compute_metrics, crop_mask, pixel_sums, pooled_metrics
from clipdepth.eval.protocols import evaluate, upsample
from clipdepth.eval.score import PROTOCOLS, name_from_key, score_predictions
from clipdepth.run.cli import main

NYU_NAMES = ["bathroom/rgb_00045", "bedroom/rgb_00059"]
KITTI_DRIVE = "2011_09_26_drive_0002_sync"
KITTI_NAMES = [f"{KITTI_DRIVE}/image_02/{i:010d}" for i in (5, 69)]
KITTI_RAW = (375, 1242)
KB = (slice(23, 375), slice(13, 1229))  # KB crop of 375 x 1242 by hand: top 375-352, left (1242-1216)//2
BOX = (slice(56, 472), slice(60, 604))  # DepthCLIP's 416 x 544 input box on the NYU frame


# -- tiny test sets in the real layouts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    """Two official-test frames in the BTS layout; GT in metres as the reader returns it."""
    root = tmp_path_factory.mktemp("nyu_depth_v2")
    rng = np.random.default_rng(1)
    lines, gts = [], {}
    for name in NYU_NAMES:
        scene, stem = name.split("/")
        folder = root / "official_splits/test" / scene
        folder.mkdir(parents=True)
        idx = stem.split("_")[1]
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / f"{stem}.jpg")
        mm = rng.integers(500, 11000, (480, 640)).astype(np.uint16)
        mm[rng.random((480, 640)) < 0.1] = 0  # holes
        mm[100, 100:110] = 10000  # exactly max: valid for eigen_nyu, not for DepthCLIP's gt < max
        Image.fromarray(mm).save(folder / f"sync_depth_{idx}.png")
        lines.append(f"{scene}/{stem}.jpg {scene}/sync_depth_{idx}.png 518.8579")
        gts[name] = (mm.astype(np.float32) / np.float32(1000)).astype(np.float64)
    (root / "my_test.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "split": root / "my_test.txt", "gt": gts}


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    """Two left-camera Eigen test frames at full raw size, plus a line without GT (skipped by the reader)."""
    raw = tmp_path_factory.mktemp("kitti_raw")
    rng = np.random.default_rng(2)
    lines, gts = [], {}
    for name in KITTI_NAMES:
        frame = name.rsplit("/", 1)[1]
        img = raw / f"2011_09_26/{KITTI_DRIVE}/image_02/data/{frame}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*KITTI_RAW, 3), dtype=np.uint8)).save(img)
        depth = rng.integers(256, 90 * 256, KITTI_RAW).astype(np.uint16)  # up to 90 m: some above the cap
        depth[rng.random(KITTI_RAW) < 0.8] = 0  # sparse LiDAR
        gt_rel = f"{KITTI_DRIVE}/proj_depth/groundtruth/image_02/{frame}.png"
        (raw / "data_depth_annotated" / gt_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth).save(raw / "data_depth_annotated" / gt_rel)
        lines.append(f"2011_09_26/{KITTI_DRIVE}/image_02/data/{frame}.png {gt_rel} 721.5377")
        gts[name] = (depth.astype(np.float32) / np.float32(256)).astype(np.float64)[KB]
    lines.append(f"2011_09_26/{KITTI_DRIVE}/image_02/data/0000000099.png None 721.5377")
    (raw / "my_eigen_test.txt").write_text("\n".join(lines) + "\n")
    return {"root": raw, "split": raw / "my_eigen_test.txt", "gt": gts}


def _predictions(dataset: str, shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """float32 maps with values below min, above max and zeros, so that clamping matters."""
    rng = np.random.default_rng(seed)
    top = 12.0 if dataset == "nyu" else 95.0
    out = {}
    for name in NYU_NAMES if dataset == "nyu" else KITTI_NAMES:
        p = rng.uniform(0.3, top, shape).astype(np.float32)
        p[:3, :7] = 0.0
        out[name] = p
    return out


def _write(fmt: str, folder: Path, preds: dict[str, np.ndarray], scale: float) -> tuple[Path, dict[str, np.ndarray]]:
    """Write ``preds`` in format ``fmt``; return the path to score and the maps as the scorer will read them."""
    folder.mkdir(parents=True, exist_ok=True)
    read = dict(preds)
    if fmt == "npy":  # nested folders mirroring the names
        for name, p in preds.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{name}.npy", p)
        return folder, read
    if fmt == "npz":  # flat, '/' written as '__'
        for name, p in preds.items():
            np.savez_compressed(folder / f"{name.replace('/', '__')}.npz", depth=p)
        return folder, read
    if fmt == "png":  # 16-bit, value / scale
        for name, p in preds.items():
            write_depth_png(folder / f"{name.replace('/', '__')}.png", p, scale)
            read[name] = read_depth_png(folder / f"{name.replace('/', '__')}.png", scale)
        return folder, read
    if fmt == "h5":  # one file, HDF5 groups follow the '/' of the names
        path = folder / "all.h5"
        with h5py.File(path, "w") as fh:
            for name, p in preds.items():
                fh.create_dataset(name, data=p)
        return path, read
    if fmt == "npz-bundle":
        path = folder / "all.npz"
        np.savez(path, **{name.replace("/", "__"): p for name, p in preds.items()})
        return path, read
    raise AssertionError(fmt)


def _reference(protocol: str, pred: np.ndarray, gt: np.ndarray, max_depth: float) -> dict[str, float]:
    """compute_metrics on the map the protocol scores, built by hand (paste, clamp) from the saved map."""
    if protocol == "depthclip_nyu":
        canvas = np.zeros(gt.shape, dtype=pred.dtype)
        canvas[BOX] = pred
        return compute_metrics(np.minimum(canvas, max_depth), gt, crop="depthclip_nyu", max_depth=max_depth,
                               max_inclusive=False, min_pred=1e-3)
    return compute_metrics(np.clip(pred, 1e-3, max_depth), gt, crop=PROTOCOLS[protocol].crop, max_depth=max_depth)


def _pooled_by_numpy(protocol: str, preds: dict[str, np.ndarray], gts: dict[str, np.ndarray], max_depth: float):
    """All valid pixels of all images concatenated, metrics straight from numpy."""
    ps, gs = [], []
    for name, gt in gts.items():
        pred = preds[name]
        if protocol == "depthclip_nyu":
            canvas = np.zeros(gt.shape, dtype=np.float64)
            canvas[BOX] = pred
            p = np.minimum(canvas, max_depth)
            valid = crop_mask("depthclip_nyu", gt.shape) & (gt > 1e-3) & (gt < max_depth) & (p > 1e-3)
        else:
            p = np.clip(pred, 1e-3, max_depth).astype(np.float64)
            valid = crop_mask(PROTOCOLS[protocol].crop, gt.shape) & (gt > 1e-3) & (gt <= max_depth)
        ps.append(p[valid])
        gs.append(gt[valid])
    p, g = np.concatenate(ps), np.concatenate(gs)
    t = np.maximum(p / g, g / p)
    e = np.log(p) - np.log(g)
    return {
        "abs_rel": np.mean(np.abs(p - g) / g), "sq_rel": np.mean((p - g) ** 2 / g),
        "rmse": np.sqrt(np.mean((p - g) ** 2)), "rmse_log": np.sqrt(np.mean(e**2)), "log_mse": np.mean(e**2),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(g))), "silog": 100 * np.sqrt(np.mean(e**2) - np.mean(e) ** 2),
        "d1": np.mean(t < 1.25), "d2": np.mean(t < 1.25**2), "d3": np.mean(t < 1.25**3),
    }, len(p)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["score", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# -- metrics additions: hand-worked ------------------------------------------------------------------------


def test_eigen_kitti_crop_hand_worked():
    # 375 x 1242: rows int(0.3324324*375)=124 : int(0.91351351*375)=342, cols int(44.65)=44 : int(1197.35)=1197
    m = crop_mask("eigen_kitti", (375, 1242))
    assert m.sum() == 218 * 1153 and m[124, 44] and m[341, 1196] and not m[123, 44] and not m[342, 1196]
    # 352 x 1216 (KB crop): rows 117:321, cols 43:1172
    assert crop_mask("eigen_kitti", (352, 1216)).sum() == 204 * 1129


def test_pooled_metrics_hand_worked():
    """Image A: gt (1, 2, 4), pred (1, 1, 5); image B: gt 2, pred 4. Four pooled pixels:
    abs_rel (0 + 1/2 + 1/4 + 1)/4 = 0.4375 (per-image mean would be (0.25 + 1)/2 = 0.625);
    rmse sqrt((0 + 1 + 1 + 4)/4) = sqrt(1.5); ratios 1, 2, 1.25, 2 -> d1 1/4, d2 = d3 = 2/4;
    ln errors 0, -ln2, ln1.25, ln2 -> log_mse (2 ln2^2 + ln1.25^2)/4, mean ln1.25/4."""
    a = pixel_sums(np.array([1.0, 1.0, 5.0]), np.array([1.0, 2.0, 4.0]))
    b = pixel_sums(np.array([4.0]), np.array([2.0]))
    assert a["n"] == 3 and b["n"] == 1
    m = pooled_metrics([a, b])
    ln2, ln125 = math.log(2), math.log(1.25)
    log_mse = (2 * ln2**2 + ln125**2) / 4
    assert m["abs_rel"] == pytest.approx(0.4375)
    assert m["sq_rel"] == pytest.approx((0 + 0.5 + 0.25 + 2) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(1.5))
    assert m["log_mse"] == pytest.approx(log_mse) and m["rmse_log"] == pytest.approx(math.sqrt(log_mse))
    assert m["log10"] == pytest.approx((2 * math.log10(2) + math.log10(1.25)) / 4)
    assert m["silog"] == pytest.approx(100 * math.sqrt(log_mse - (ln125 / 4) ** 2))
    assert (m["d1"], m["d2"], m["d3"]) == (0.25, 0.5, 0.5)


def test_pooled_of_one_image_is_compute_metrics_exactly():
    rng = np.random.default_rng(3)
    gt, pred = rng.uniform(0, 11, (480, 640)), rng.uniform(0.1, 10, (480, 640))
    for kw in ({"crop": "eigen_nyu"}, {"crop": "depthclip_nyu", "max_inclusive": False, "min_pred": 1e-3},
               {"crop": "none", "median_scaling": True}):
        assert pooled_metrics([pixel_sums(pred, gt, **kw)]) == compute_metrics(pred, gt, **kw)


# -- exactness: every protocol x every format ---------------------------------------------------------------

FORMATS = ("npy", "npz", "png", "h5", "npz-bundle")
CASES = [("nyu", p) for p in ("eigen_nyu", "depthclip_nyu", "none")] + [
    ("kitti", p) for p in ("garg_kitti", "eigen_kitti", "none")
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dataset,protocol", CASES)
def test_score_equals_compute_metrics_per_image(dataset, protocol, fmt, nyu, kitti, tmp_path, capsys):
    data = nyu if dataset == "nyu" else kitti
    max_depth, scale = (10.0, 1000.0) if dataset == "nyu" else (80.0, 256.0)
    shape = (416, 544) if protocol == "depthclip_nyu" else (480, 640) if dataset == "nyu" else (352, 1216)
    path, read = _write(fmt, tmp_path / "pred", _predictions(dataset, shape), scale)
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, path, "--dataset", dataset, "--root", data["root"], "--split-file",
                           data["split"], "--protocol", protocol, "--out", out)
    assert rc == 0, err
    table = pd.read_csv(out / "per_image.csv")
    assert table["name"].tolist() == list(data["gt"])
    for (_, row), (name, gt) in zip(table.iterrows(), data["gt"].items(), strict=True):
        expected = _reference(protocol, read[name], gt, max_depth)
        assert {m: row[m] for m in METRIC_NAMES} == expected, name  # exact, not approx
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_image_mean"] == {m: float(table[m].mean()) for m in METRIC_NAMES}
    pooled, n = _pooled_by_numpy(protocol, read, data["gt"], max_depth)
    assert summary["n_pixels"] == n == table["n_pixels"].sum()
    assert summary["pixel_pooled"] == pytest.approx(pooled, rel=1e-12)
    assert summary["settings"]["protocol"] == protocol and summary["settings"]["n_images"] == 2
    assert "per-image mean" in stdout and "pixel-pooled" in stdout


def test_kitti_full_frame_predictions_are_kb_cropped(kitti, tmp_path):
    preds = _predictions("kitti", KITTI_RAW, seed=5)
    path, _ = _write("npy", tmp_path / "pred", preds, 256.0)
    result = score_predictions(path, "kitti", kitti["root"], split_file=kitti["split"])
    for name, metrics in zip(result.names, result.per_image, strict=True):
        assert metrics == _reference("garg_kitti", preds[name][KB], kitti["gt"][name], 80.0)
    assert result.settings["skipped_lines"] == {"no ground truth": 1}


def test_list_rgb_path_is_accepted_as_a_name(kitti, tmp_path):
    preds = _predictions("kitti", (352, 1216))
    folder = tmp_path / "pred"
    for name, p in preds.items():
        drive, cam, frame = name.split("/")
        target = folder / f"2011_09_26/{drive}/{cam}/data/{frame}.npy"  # mirrors the raw tree
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, p)
    result = score_predictions(folder, "kitti", kitti["root"], split_file=kitti["split"])
    assert result.per_image[1] == _reference("garg_kitti", preds[KITTI_NAMES[1]], kitti["gt"][KITTI_NAMES[1]], 80.0)


def test_median_scaling_and_depth_range_options(nyu, tmp_path):
    preds = {n: 0.1 * np.abs(p) + 0.01 for n, p in _predictions("nyu", (480, 640)).items()}  # relative depth
    path, _ = _write("npy", tmp_path / "pred", preds, 1000.0)
    result = score_predictions(path, "nyu", nyu["root"], "eigen_nyu", split_file=nyu["split"], median_scaling=True,
                               min_depth=0.5, max_depth=8.0)
    for name, metrics in zip(result.names, result.per_image, strict=True):  # no range clamp under median scaling
        assert metrics == compute_metrics(preds[name], nyu["gt"][name], crop="eigen_nyu", min_depth=0.5,
                                          max_depth=8.0, median_scaling=True)
    assert result.settings["clamp"] == "none"


def test_resize_matches_the_evaluate_path(nyu, tmp_path):
    """Low-resolution maps with --resize score exactly as clipdepth.eval.protocols scores a predictor returning them
    (authors' protocol and DepthCLIP's), so the notebooks and the scorer share one code path."""
    reader = NYUDepthV2(nyu["root"], "test", nyu["split"])
    low = _predictions("nyu", (15, 20), seed=7)
    path, _ = _write("npy", tmp_path / "pred", low, 1000.0)
    for protocol, eval_kw in (("eigen_nyu", {"protocol": "authors", "crop": "eigen_nyu"}),
                              ("depthclip_nyu", {"protocol": "depthclip", "crop": "depthclip_nyu"})):
        queue = iter(low[n] for n in reader.names())
        ours = evaluate(lambda _x, q=queue: torch.from_numpy(next(q))[None, None], reader, 1e-3, 10.0, flip=False,
                        progress=False, **eval_kw)
        result = score_predictions(path, "nyu", nyu["root"], protocol, split_file=nyu["split"], resize=True)
        assert result.per_image == ours.per_image and result.per_image_mean == ours.mean
    # and by hand: bilinear, align_corners=True, after clamping
    name = NYU_NAMES[0]
    full = upsample(torch.from_numpy(np.clip(low[name], 1e-3, 10.0))[None, None], (480, 640))
    eigen = score_predictions(path, "nyu", nyu["root"], split_file=nyu["split"], resize=True)
    assert eigen.per_image[0] == compute_metrics(full, nyu["gt"][name], crop="eigen_nyu")


def test_compare_prints_published_rows(nyu, tmp_path, capsys):
    path, _ = _write("npy", tmp_path / "pred", _predictions("nyu", (480, 640)), 1000.0)
    rc, out, err = _run(capsys, path, "--dataset", "nyu", "--root", nyu["root"], "--split-file", nyu["split"],
                        "--compare", "--out", tmp_path / "o")
    assert rc == 0, err
    row = next(ln for ln in out.splitlines() if ln.startswith("published t3/nyu/learned-7"))
    assert "0.3190" in row  # paper Table 3, learned-7 NYU abs_rel
    assert any(ln.startswith("published depthclip/nyu/zero-shot") and "0.3880" in ln for ln in out.splitlines())
    assert "note: CLIP2Depth" in out  # relative claims are notes, never rows
    summary = json.loads((tmp_path / "o/summary.json").read_text())
    assert [r["experiment"] for r in summary["published"]] == ["t3/nyu/learned-7", "depthclip/nyu/zero-shot"]
    assert summary["published"][1]["protocol"] == "depthclip_nyu"
    rc, out, _ = _run(capsys, path, "--dataset", "nyu", "--root", nyu["root"], "--split-file", nyu["split"],
                      "--compare", "t4")
    assert rc == 0 and sum(ln.startswith("published t4/nyu/") for ln in out.splitlines()) == 4


def test_name_rule():
    assert name_from_key("bathroom__rgb_00045") == "bathroom/rgb_00045"
    assert name_from_key("/bathroom/rgb_00045") == "bathroom/rgb_00045"
    assert name_from_key("./a__b/c") == "a/b/c"


# -- bad inputs: one line each, exit 1 for data problems, 2 for arguments --------------------------------------


@pytest.fixture
def nyu_preds(tmp_path):
    preds = _predictions("nyu", (480, 640))
    path, _ = _write("npy", tmp_path / "pred", preds, 1000.0)
    return path


def _nyu_args(nyu, path, *extra):
    return (path, "--dataset", "nyu", "--root", nyu["root"], "--split-file", nyu["split"], *extra)


def _one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_prediction(nyu, nyu_preds, capsys):
    (nyu_preds / "bedroom/rgb_00059.npy").unlink()
    rc, out, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    line = _one_error(err)
    assert rc == 1 and out == "" and "no prediction for test image 'bedroom/rgb_00059'" in line
    (nyu_preds / "bathroom/rgb_00045.npy").unlink()
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    assert rc == 1 and "'bathroom/rgb_00045' (and 1 more of 2 test images)" in _one_error(err)


def test_extra_and_duplicate_predictions(nyu, nyu_preds, capsys):
    np.save(nyu_preds / "kitchen__rgb_00001.npy", np.ones((480, 640), np.float32))
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    assert rc == 1 and "1 prediction(s) match no test image" in _one_error(err) and "kitchen__rgb_00001.npy" in err
    (nyu_preds / "kitchen__rgb_00001.npy").unlink()
    np.save(nyu_preds / "bathroom__rgb_00045.npy", np.ones((480, 640), np.float32))
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    line = _one_error(err)
    assert rc == 1 and "are both predictions for 'bathroom/rgb_00045'" in line and "bathroom__rgb_00045.npy" in line


def test_wrong_size_without_resize(nyu, nyu_preds, capsys):
    bad = nyu_preds / "bedroom/rgb_00059.npy"
    np.save(bad, np.ones((240, 320), np.float32))
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    line = _one_error(err)
    assert rc == 1 and str(bad) in line and "is 240x320, expected 480x640" in line and "--resize" in line
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds, "--protocol", "depthclip_nyu"))
    assert rc == 1 and "depthclip_nyu expects the 416x544 input box or the 480x640 frame" in _one_error(err)
    rc, _, _ = _run(capsys, *_nyu_args(nyu, nyu_preds, "--resize"))
    assert rc == 0


@pytest.mark.parametrize("value,message", [(np.nan, "1 NaN or infinite value(s)"),
                                           (np.inf, "1 NaN or infinite value(s)"),
                                           (-1.0, "1 negative depth value(s)")])
def test_invalid_values(nyu, nyu_preds, capsys, value, message):
    bad = nyu_preds / "bathroom/rgb_00045.npy"
    p = np.load(bad)
    p[300, 300] = value
    np.save(bad, p)
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    line = _one_error(err)
    assert rc == 1 and line == f"error: {bad}: prediction has {message}"


def test_unscorable_image_and_broken_ground_truth(nyu, nyu_preds, tmp_path, capsys):
    # median scaling turns off the range clamp, so the zeros at rows 0-2 are scored under `none`
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds, "--protocol", "none", "--median-scaling"))
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 2  # one line per image
    assert lines[0] == (f"error: {nyu_preds / 'bathroom/rgb_00045.npy'}: cannot score 'bathroom/rgb_00045': "
                        "prediction has non-positive or non-finite values at valid pixels; clamp first")
    broken = tmp_path / "nyu_copy"
    shutil.copytree(nyu["root"], broken)
    (broken / "official_splits/test/bedroom/sync_depth_00059.png").write_bytes(b"not a png")
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds)[:3], "--root", broken, "--split-file", broken / "my_test.txt")
    assert rc == 1 and "sync_depth_00059.png: cannot decode depth map" in _one_error(err)


def test_bad_files_and_arguments(nyu, nyu_preds, tmp_path, capsys):
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds, "--protocol", "eigen"))
    assert rc == 2 and _one_error(err) == (
        "error: unknown protocol 'eigen'; valid: eigen_nyu, depthclip_nyu, garg_kitti, eigen_kitti, none")
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds, "--protocol", "garg_kitti"))
    assert rc == 2 and "protocol 'garg_kitti' is for kitti, not nyu" in _one_error(err)
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds, "--min-depth", "5", "--max-depth", "1"))
    assert rc == 2 and "need 0 <= min < max" in _one_error(err)
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds, "--compare", "t9"))
    assert rc == 2 and "--compare 't9'" in _one_error(err)
    rc, _, err = _run(capsys, *_nyu_args(nyu, tmp_path / "nowhere"))
    assert rc == 1 and "predictions path does not exist" in _one_error(err)
    rc, _, err = _run(capsys, nyu_preds, "--dataset", "nyu", "--root", tmp_path / "no_root")
    assert rc == 1 and _one_error(err) == f"error: {tmp_path / 'no_root'}: NYU Depth v2 root does not exist"
    (nyu["split"].parent / "short.txt").write_text(nyu["split"].read_text() + "kitchen/rgb_00001.jpg kitchen/d.png 1\n")
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds)[:5], "--split-file", nyu["split"].parent / "short.txt")
    assert rc == 1 and "2 listed file(s) are missing" in _one_error(err) and "kitchen/rgb_00001.jpg" in err
    np.savez(nyu_preds / "bedroom/rgb_00059.npz", a=np.ones((480, 640)), b=np.ones((480, 640)))
    (nyu_preds / "bedroom/rgb_00059.npy").unlink()
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds))
    assert rc == 1 and "must hold exactly one array, found 2" in _one_error(err)
    rc, _, err = _run(capsys, *_nyu_args(nyu, nyu_preds / "bathroom/rgb_00045.npy"))
    assert rc == 1 and "must be a bundle" in _one_error(err)


def test_subprocess_python_m_clipdepth(kitti, tmp_path):
    path, _ = _write("h5", tmp_path / "pred", _predictions("kitti", (352, 1216)), 256.0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "clipdepth", "score", str(path), "--dataset", "kitti", "--root", str(kitti["root"]),
         "--split-file", str(kitti["split"]), "--protocol", "eigen_kitti", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "protocol eigen_kitti" in run.stdout and "pixel-pooled" in run.stdout
    assert (tmp_path / "o/per_image.csv").is_file() and (tmp_path / "o/summary.json").is_file()
