"""Every file a run reads is decoded before anything runs: a corrupt JPEG, an all-zero depth PNG and
an 8-bit depth PNG are each reported by path (and list line), serially and in parallel, by
:func:`validate_split`, by the paper profile's prerequisite check, and by ``./run_all.sh``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdepth.data import DataError, NYUDepthV2
from clipdepth.data.synthetic import ensure_synthetic_dataset
from clipdepth.data.validate import raise_if_invalid, validate_split
from clipdepth.run import run_all as runall

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """``<data_dir>/nyu`` in the real NYU layout: 2 train + 3 test frames, three of them broken."""
    data_dir = tmp_path_factory.mktemp("data")
    root = ensure_synthetic_dataset("indoor", data_dir / "nyu", 2, 3, seed=0, size=(32, 48))
    test = NYUDepthV2(root, "test")
    jpeg = test.items[0].rgb
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])  # truncated mid-scan
    Image.fromarray(np.zeros((32, 48), np.uint16)).save(test.items[2].depth)  # all zero
    train = NYUDepthV2(root, "train")
    Image.fromarray(np.full((32, 48), 200, np.uint8)).save(train.items[1].depth)  # 8-bit
    return data_dir


@pytest.mark.parametrize("workers", [1, 3])
def test_validate_split_names_every_bad_file(damaged: Path, workers: int, capsys) -> None:
    root = damaged / "nyu"
    test, train = NYUDepthV2(root, "test"), NYUDepthV2(root, "train")
    problems = validate_split(test, progress=True, workers=workers)
    assert len(problems) == 2
    assert problems[0].startswith(f"{test.items[0].rgb}: cannot decode image (corrupt or truncated file: ")
    assert problems[0].endswith(f" (line 1 of {test.split_file})")
    assert problems[1] == (f"{test.items[2].depth}: depth map is all zero (no ground truth at any pixel) "
                           f"(line 3 of {test.split_file})")
    assert validate_split(train, progress=False, workers=workers) == [
        f"{train.items[1].depth}: depth PNG has mode 'L' (8-bit or colour); expected a 16-bit single-channel PNG "
        f"(line 2 of {train.split_file})"]
    assert "validating nyu test" in capsys.readouterr().err  # the progress bar
    with pytest.raises(DataError, match=r"^2 unusable file\(s\) in the data this run reads: .*rgb_"):
        raise_if_invalid(test, progress=False)


def test_a_clean_split_has_no_problems(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset("indoor", tmp_path / "nyu", 1, 2, seed=0, size=(32, 48))
    assert validate_split(NYUDepthV2(root, "test"), progress=False, workers=2) == []


def test_paper_prerequisites_decode_every_listed_file(damaged: Path, tmp_path: Path) -> None:
    weights = tmp_path / "rn50.pt"
    weights.write_bytes(b"x")
    found = [m.what for m in runall.check_paper_prerequisites(["nyu"], damaged, str(weights), workers=2)]
    bad = NYUDepthV2(damaged / "nyu", "test").items
    assert len(found) == 3
    assert found[0].startswith(f"nyu train: {NYUDepthV2(damaged / 'nyu', 'train').items[1].depth}: depth PNG")
    assert found[1].startswith(f"nyu test: {bad[0].rgb}: cannot decode image")
    assert found[2].startswith(f"nyu test: {bad[2].depth}: depth map is all zero")
    assert runall.check_paper_prerequisites(["nyu"], damaged, str(weights), decode=False) == []


def test_run_all_paper_profile_reports_a_corrupt_frame_before_anything_runs(damaged: Path, tmp_path: Path) -> None:
    weights = tmp_path / "rn50.pt"
    weights.write_bytes(b"x")
    reports = tmp_path / "reports"
    env = {**os.environ, "CLIPDEPTH_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(REPO / "run_all.sh"), "--profile", "paper", "-p", "data_dir", str(damaged),
                           "-p", "weights", str(weights), "-p", "datasets", "nyu", "--reports-dir", str(reports)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=str(REPO))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    bad = NYUDepthV2(damaged / "nyu", "test").items
    assert f"  - nyu test: {bad[0].rgb}: cannot decode image" in proc.stderr
    assert f"  - nyu test: {bad[2].depth}: depth map is all zero" in proc.stderr
    assert "Nothing was run" in proc.stderr and not reports.exists()
