"""Bad input is refused early with one line naming the file (and line): split lists that escape their
data root or are not UTF-8, transposed predictions, tar archives whose members collide, and a missing
root reported once by ``clipdepth data check --split all``."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdepth.data import DataError, NYUDepthV2
from clipdepth.data.download import extract_archive
from clipdepth.eval.metrics import compute_metrics
from clipdepth.run.cli import main


def _frame(folder: Path, stem: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb, depth = folder / f"rgb_{stem}.jpg", folder / f"sync_depth_{stem}.png"
    Image.fromarray(np.full((6, 8, 3), 128, np.uint8)).save(rgb)
    Image.fromarray(np.full((6, 8), 2500, np.uint16)).save(depth)
    return rgb, depth


@pytest.fixture
def nyu(tmp_path: Path) -> Path:
    """An NYU root (official test layout) with one good frame, and a frame *outside* the root."""
    root = tmp_path / "nyu"
    _frame(root / "official_splits/test/kitchen", "00001")
    _frame(tmp_path / "elsewhere", "00002")
    return root


def _check(root: Path, split_file: Path, capsys) -> tuple[int, str]:
    status = main(["data", "check", "--dataset", "nyu", "--root", str(root), "--split", "test",
                   "--split-file", str(split_file), "--no-fetch"])
    return status, capsys.readouterr().err


def test_list_lines_that_leave_the_data_root_are_refused_with_the_line_number(nyu: Path, capsys) -> None:
    lst = nyu / "list.txt"
    good = "kitchen/rgb_00001.jpg kitchen/sync_depth_00001.png 518.8579\n"
    # the escaping line points at real, decodable files: today they are read as if they were NYU frames
    lst.write_text(good + "../../../elsewhere/rgb_00002.jpg kitchen/sync_depth_00001.png 518.8579\n")
    with pytest.raises(DataError) as info:
        NYUDepthV2(nyu, "test", lst)
    assert str(info.value) == (f"{lst}:2: path '../../../elsewhere/rgb_00002.jpg' leaves the data root "
                               "(it resolves outside the folder the list's paths are relative to); refusing it")
    lst.write_text(good + "kitchen/rgb_00001.jpg kitchen/../../../../etc/passwd 518.8579\n")
    status, err = _check(nyu, lst, capsys)
    assert status == 1
    assert err == f"error: {lst}:2: path 'kitchen/../../../../etc/passwd' leaves the data root (it resolves " \
                  "outside the folder the list's paths are relative to); refusing it\n"
    lst.write_text(good + "kitchen/./rgb_00001.jpg ./kitchen/sync_depth_00001.png\n")  # stays inside: fine
    assert len(NYUDepthV2(nyu, "test", lst)) == 2


def test_a_split_list_that_is_not_utf8_names_the_file_and_line(nyu: Path, capsys) -> None:
    lst = nyu / "list.txt"
    lst.write_bytes(b"kitchen/rgb_00001.jpg kitchen/sync_depth_00001.png 518.8579\nkitchen/rgb_\xe9.jpg x.png\n")
    status, err = _check(nyu, lst, capsys)
    assert status == 1
    assert err == (f"error: {lst}:2: not UTF-8 text (byte 0xe9 at column 13); a split list must be "
                   "UTF-8 (or ASCII)\n")
    assert "Traceback" not in err


def test_transposed_or_extra_dimension_predictions_are_refused() -> None:
    gt = np.linspace(1.0, 5.0, 12).reshape(1, 12)  # one row of 12 pixels
    with pytest.raises(ValueError) as info:
        compute_metrics(gt.T, gt)  # a 12 x 1 column: transposed, squeezing both would hide it
    assert str(info.value) == ("prediction of shape (12, 1) and ground truth of shape (1, 12) differ (after "
                               "removing leading batch/channel dimensions of size 1); upsample first and check "
                               "the prediction is not transposed")
    img = np.linspace(1.0, 5.0, 12).reshape(3, 4)
    with pytest.raises(ValueError, match=r"prediction of shape \(3, 4, 1\) and ground truth of shape \(3, 4\)"):
        compute_metrics(img[..., None], img)
    # leading batch and channel dimensions of size 1 are fine, on either side
    assert compute_metrics(img[None, None], img)["abs_rel"] == 0.0
    assert compute_metrics(img, img[None])["abs_rel"] == 0.0


def _tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_tar_with_a_file_and_a_member_inside_it_is_refused_before_writing(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "clash.tar", [("first.txt", b"1"), ("a", b"file"), ("a/b", b"inside a file")])
    target = tmp_path / "out"
    with pytest.raises(DataError) as info:
        extract_archive(archive, target)
    assert str(info.value) == (f"{archive}: member 'a/b' needs 'a' to be a folder, but the archive also has "
                               "a file 'a'; refusing to extract")
    assert list(target.iterdir()) == [], "nothing may be written before the check"
    # the same clash with a file already in the target folder
    (target / "a").write_text("existing file")
    archive2 = _tar(tmp_path / "inside.tar", [("a/b", b"x")])
    with pytest.raises(DataError) as info:
        extract_archive(archive2, target)
    assert str(info.value) == (f"{archive2}: member 'a/b' needs {target.resolve() / 'a'} to be a folder, but it "
                               "is a file; refusing to extract")
    # a folder member, then files inside it, is the normal case
    ok = _tar(tmp_path / "ok.tar", [("d", None), ("d/e", b"e")])
    assert [p.name for p in extract_archive(ok, tmp_path / "ok")] == ["e"]


def test_check_split_all_reports_a_missing_root_once(tmp_path: Path, capsys) -> None:
    status = main(["data", "check", "--dataset", "nyu", "--root", str(tmp_path / "absent"), "--split", "all",
                   "--no-fetch"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == f"error: {tmp_path / 'absent'}: NYU Depth v2 root does not exist\n"
