"""``clipdepth data check`` / ``data synth`` through the real console dispatcher."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipdepth.data.common import read_manifest
from clipdepth.run.cli import main


def test_synth_then_check_ok(tmp_path, capsys):
    out = tmp_path / "nyu"
    assert (
        main(
            [
                "data",
                "synth",
                "--family",
                "indoor",
                "--out",
                str(out),
                "--train",
                "2",
                "--test",
                "2",
                "--seed",
                "1",
                "--size",
                "48",
                "64",
            ]
        )
        == 0
    )
    assert read_manifest(out)["seed"] == 1
    assert main(["data", "check", "--dataset", "nyu", "--root", str(out), "--split", "all"]) == 0
    text = capsys.readouterr().out
    assert "nyu train: 2 lines" in text and "nyu test: 2 lines" in text
    assert "2 samples, 0 missing files, 0 unreadable or invalid samples" in text and "OK" in text


def test_check_reports_missing_and_corrupt_files_by_path(tmp_path, capsys):
    out = tmp_path / "kitti"
    assert (
        main(
            [
                "data",
                "synth",
                "--family",
                "outdoor",
                "--out",
                str(out),
                "--train",
                "0",
                "--test",
                "3",
                "--size",
                "32",
                "96",
            ]
        )
        == 0
    )
    gt = out / "data_depth_annotated/val/2011_09_26_drive_9002_sync/proj_depth/groundtruth/image_02"
    img = out / "2011_09_26/2011_09_26_drive_9002_sync/image_02/data"
    (gt / "0000000001.png").unlink()
    (img / "0000000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "kitti", "--root", str(out)]) == 1
    text = capsys.readouterr().out
    depth_root = out / "data_depth_annotated"
    rel = "2011_09_26_drive_9002_sync/proj_depth/groundtruth/image_02/0000000001.png"
    assert (
        f"missing: line 2: {depth_root / rel} (also looked under {depth_root / 'train'} and "
        f"{depth_root / 'val'})"
    ) in text
    assert f"bad: {img / '0000000002.png'}: cannot decode image" in text
    assert (
        "kitti test: 3 lines" in text
        and "1 samples, 1 missing files, 1 unreadable or invalid samples" in text
    )
    assert "PROBLEMS FOUND" in text
    # existence-only check sees the missing file but not the corrupt one
    assert main(["data", "check", "--dataset", "kitti", "--root", str(out), "--no-decode"]) == 1


def test_check_wrong_root_and_8bit_depth(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "nyu", "--root", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: NYU Depth v2 root does not exist" in capsys.readouterr().err
    root = tmp_path / "nyu"
    scene = root / "official_splits/test/office"
    scene.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(scene / "rgb_00001.jpg")
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(scene / "sync_depth_00001.png")
    (root / "custom.txt").write_text("office/rgb_00001.jpg office/sync_depth_00001.png 518.8579\n")
    assert (
        main(
            [
                "data",
                "check",
                "--dataset",
                "nyu",
                "--root",
                str(root),
                "--split-file",
                str(root / "custom.txt"),
            ]
        )
        == 1
    )
    assert "sync_depth_00001.png: depth PNG has mode 'L'" in capsys.readouterr().out


def test_check_split_file_with_all_is_a_usage_error(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "check",
                "--dataset",
                "nyu",
                "--root",
                str(tmp_path),
                "--split",
                "all",
                "--split-file",
                "x.txt",
            ]
        )
        == 2
    )
    assert "--split-file names one list" in capsys.readouterr().err
