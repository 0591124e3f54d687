"""Paper-shaped data root + ``subset``: the paper profile's readers on full-length lists, few frames on disk."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from clipdepth.data import splits as splits_module
from clipdepth.data.common import DataError, read_manifest
from clipdepth.data.kitti import KITTIEigen
from clipdepth.data.nyu import NYUDepthV2
from clipdepth.data.paper_shaped import KITTI_DATES, write_paper_shaped
from clipdepth.data.profile_data import open_split, subset_label
from clipdepth.data.synthetic import TEST_INDEX_OFFSET, render_indoor, render_outdoor
from clipdepth.run.cli import main
from clipdepth.study import experiments

N_TRAIN, N_TEST = 5, 3  # five KITTI train frames meet the five recording dates (raw sizes)
LINES = {"nyu_train": 300, "nyu_test": 200, "kitti_train": 300, "kitti_test": 200}


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    info = write_paper_shaped(root, N_TRAIN, N_TEST, LINES, seed=0)
    return root, info


@pytest.fixture
def paper(shaped, monkeypatch):
    """The paper profile pointed at the shaped root, with any download attempt turned into a failure."""
    root, _ = shaped
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(root))

    def no_download(*args, **kwargs):
        raise AssertionError(f"the paper profile tried to download {args[:1]}")

    monkeypatch.setattr(splits_module, "download", no_download)

    def opener(dataset: str, split: str, subset: int | None):
        exp = next(e for e in experiments.EXPERIMENTS.values() if e.dataset == dataset)
        return open_split(experiments.resolve(exp, "paper"), split, subset=subset)

    return opener


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_lists_follow_the_real_patterns_and_only_the_first_lines_exist(shaped):
    root, info = shaped
    nyu, raw, depth = root / "nyu", root / "kitti" / "raw", root / "kitti" / "depth"
    train, test = _lines(nyu / "nyudepthv2_train_files_with_gt.txt"), _lines(nyu / "nyudepthv2_test_files_with_gt.txt")
    assert (len(train), len(test)) == (300, 200)
    nyu_train = re.compile(r"^/(\w+_\d{4}[ab]?)/rgb_(\d{5})\.jpg /\1/sync_depth_\2\.png 518\.8579$")
    nyu_test = re.compile(r"^([a-z_]+)/rgb_(\d{5})\.jpg \1/sync_depth_\2\.png 518\.8579$")
    assert all(nyu_train.match(x) for x in train) and all(nyu_test.match(x) for x in test)
    k_train, k_test = _lines(raw / "eigen_train_files_with_gt.txt"), _lines(raw / "eigen_test_files_with_gt.txt")
    kitti = re.compile(
        r"^(2011_\d\d_\d\d)/(\1_drive_\d{4}_sync)/image_02/data/(\d{10}\.png) "
        r"(\2/proj_depth/groundtruth/image_02/\3|None) (\d+\.\d+)$"
    )
    for line in k_train + k_test:
        m = kitti.match(line)
        assert m, line
        assert float(m.group(5)) == KITTI_DATES[m.group(1)][1]  # focal of the recording date
    assert sum(x.split()[1] == "None" for x in k_train) == 0
    none_lines = [i for i, x in enumerate(k_test, 1) if x.split()[1] == "None"]
    assert len(none_lines) == round(200 * 45 / 697) and none_lines[0] == 2
    # the first N_TRAIN / N_TEST lines exist on disk (RGB only for a None line), the next one does not
    for lines, base in ((train, nyu / "sync"), (test, nyu / "official_splits/test")):
        for i, line in enumerate(lines[: N_TEST + 3]):
            rgb, dep = (base / p.lstrip("/") for p in line.split()[:2])
            n = N_TRAIN if base.name == "sync" else N_TEST
            assert rgb.is_file() == dep.is_file() == (i < n)
    for lines, sub, n in ((k_train, "train", N_TRAIN), (k_test, "val", N_TEST)):
        for i, line in enumerate(lines[: n + 2]):
            rgb, dep = line.split()[:2]
            assert (raw / rgb).is_file() == (i < n)
            if dep != "None":
                assert (depth / sub / dep).is_file() == (i < n)
    assert read_manifest(nyu)["kind"] == read_manifest(raw)["kind"] == "paper_shaped"
    assert info["kitti"]["splits"]["test"] == {**info["kitti"]["splits"]["test"], "count": 200, "on_disk": 3}


def test_full_length_lists_and_determinism(tmp_path):
    a = write_paper_shaped(tmp_path / "a", 0, 0)
    b = write_paper_shaped(tmp_path / "b", 0, 0)
    c = write_paper_shaped(tmp_path / "c", 0, 0, seed=1)
    counts = {(d, s): a[d]["splits"][s]["count"] for d in ("nyu", "kitti") for s in ("train", "test")}
    assert counts == {
        ("nyu", "train"): 24_231,
        ("nyu", "test"): 654,
        ("kitti", "train"): 23_158,
        ("kitti", "test"): 697,
    }
    assert a["kitti"]["splits"]["test"]["without_gt"] == 45
    test = _lines(tmp_path / "a/kitti/raw/eigen_test_files_with_gt.txt")
    assert sum(x.split()[1] == "None" for x in test) == 45
    assert a["nyu"]["splits"] == b["nyu"]["splits"] and a["kitti"]["splits"] == b["kitti"]["splits"]
    assert a["nyu"]["splits"]["train"]["sha256"] != c["nyu"]["splits"]["train"]["sha256"]
    with pytest.raises(ValueError, match=r"/nyu: already exists"):
        write_paper_shaped(tmp_path / "a", 0, 0)
    with pytest.raises(ValueError, match=r"list_lines\['nyu_test'\] = 2 is shorter than the 3 frame"):
        write_paper_shaped(tmp_path / "d", 1, 3, {"nyu_test": 2})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nyu'\]"):
        write_paper_shaped(tmp_path / "d", 1, 1, {"nyu": 2})
    assert not (tmp_path / "d" / "nyu").exists()


def test_paper_profile_reads_nyu_subset_at_full_size_in_millimetres(shaped, paper):
    root, _ = shaped
    train, test = paper("nyu", "train", N_TRAIN), paper("nyu", "test", N_TEST)
    assert (len(train), train.list_length, len(train.listed)) == (N_TRAIN, 300, N_TRAIN)
    assert (len(test), test.list_length, test.skipped) == (N_TEST, 200, 0)
    assert subset_label(N_TRAIN, train.list_length, test.list_length) == "subset: 5 of 300 train / 200 test"
    # leading '/' of the train list: resolved under sync/, names without it
    first = _lines(root / "nyu/nyudepthv2_train_files_with_gt.txt")[0].split()
    assert first[0].startswith("/") and train.items[0].rgb == root / "nyu/sync" / first[0][1:]
    assert train.names()[0] == first[0][1:-4]
    for ds, index in ((train, 0), (test, TEST_INDEX_OFFSET)):
        s = ds[0]
        assert s.image.shape == (480, 640, 3) and s.depth.shape == (480, 640) and s.focal == 518.8579
        raw = np.asarray(Image.open(ds.items[0].depth))
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(s.depth, raw.astype(np.float32) / np.float32(1000))
        truth = render_indoor(0, index).depth  # the scene the writer rendered: PNG holds round(m * 1000)
        assert np.abs(s.depth - truth).max() <= 0.0005 + 1e-6 and (s.depth > 0).mean() > 0.5


def test_paper_profile_reads_kitti_subset_kb_cropped_from_every_raw_size(shaped, paper):
    root, _ = shaped
    train = paper("kitti", "train", N_TRAIN)
    assert (len(train), train.list_length) == (N_TRAIN, 300)
    seen = set()
    for i, item in enumerate(train.items):
        date = item.entry.rgb.split("/")[0]
        seen.add(date)
        rgb = np.asarray(Image.open(item.rgb))
        gt = np.asarray(Image.open(item.depth))
        h, w = KITTI_DATES[date][0]
        assert rgb.shape == (h, w, 3) and gt.shape == (h, w) and gt.dtype == np.uint16
        assert item.depth.parent.parts[-5] == "train" and item.depth.is_relative_to(root / "kitti/depth")
        top, left = h - 352, (w - 1216) // 2
        s = train[i]
        assert s.image.shape == (352, 1216, 3) and s.depth.shape == (352, 1216)
        assert s.focal == KITTI_DATES[date][1]
        crop = (slice(top, top + 352), slice(left, left + 1216))
        np.testing.assert_array_equal(s.image, rgb[crop].astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(s.depth, gt[crop].astype(np.float32) / np.float32(256))
        # sparse like LiDAR: few pixels, isolated along columns (one point per scan line)
        valid = s.depth > 0
        assert 0.01 < valid.mean() < 0.2
        assert (valid[1:] & valid[:-1]).sum() < 0.2 * valid.sum()
        if i == 0:  # against the rendered scene: PNG holds round(m * 256)
            truth = render_outdoor(0, 0, (h, w), lidar=True).depth[crop]
            assert np.abs(s.depth - truth)[valid].max() <= 1 / 512 + 1e-6
    assert seen == set(KITTI_DATES)


def test_kitti_test_subset_skips_and_counts_none_lines(paper):
    test = paper("kitti", "test", N_TEST)
    assert (len(test.listed), len(test), test.list_length) == (3, 2, 200)
    assert test.skip_reasons == {"no ground truth": 1} and test.skipped_lines == [(2, "no ground truth")]
    assert [it.entry.line_no for it in test.items] == [1, 3]
    assert all(item.depth.parent.parts[-5] == "val" for item in test.items)
    assert test[1].image.shape == (352, 1216, 3)
    assert subset_label(3, 23_158, test.list_length) == "subset: 3 of 23,158 train / 200 test"


def test_subset_larger_than_the_list_is_a_one_line_error(shaped, paper):
    root, _ = shaped
    with pytest.raises(DataError) as err:
        paper("nyu", "test", 201)
    lst = root / "nyu/nyudepthv2_test_files_with_gt.txt"
    assert str(err.value) == (
        f"{lst}: subset=201 is larger than the list, which has 200 lines; use subset <= 200 or None for the whole list"
    )
    with pytest.raises(DataError, match=r"eigen_train_files_with_gt\.txt: subset=301 .* 300 lines") as err:
        KITTIEigen(root / "kitti/raw", root / "kitti/depth", "train", subset=301)
    assert "\n" not in str(err.value)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"^subset must be a positive number of list lines or None"):
            NYUDepthV2(root / "nyu", "train", subset=bad)
    assert NYUDepthV2(root / "nyu", "test", subset=200, on_missing="skip").listed[-1].line_no == 200


def test_without_subset_the_missing_frames_are_an_error_that_suggests_it(shaped, paper):
    root, _ = shaped
    with pytest.raises(DataError, match=r"pass subset=N\)") as err:
        paper("nyu", "test", None)
    assert str(err.value).startswith(f"{root / 'nyu/nyudepthv2_test_files_with_gt.txt'}: {2 * (200 - N_TEST)} listed")
    # existing callers (no subset): the whole list, as before
    ds = NYUDepthV2(root / "nyu", "test", on_missing="skip")
    assert (len(ds.listed), ds.list_length, ds.subset, len(ds)) == (200, 200, None, N_TEST)
    assert subset_label(None, 24_231, 654) == "full lists: 24,231 train / 654 test"
    assert subset_label(8, 24_231, 654) == "subset: 8 of 24,231 train / 654 test"


def test_data_check_subset_passes_then_names_a_missing_frame(shaped, tmp_path, capsys):
    root, _ = shaped
    kitti = ["--root", str(root / "kitti/raw"), "--depth-root", str(root / "kitti/depth")]
    nyu = ["--root", str(root / "nyu")]
    assert main(["data", "check", "--dataset", "nyu", *nyu, "--split", "all", "--subset", "3"]) == 0
    assert main(["data", "check", "--dataset", "kitti", *kitti, "--split", "all", "--subset", "3"]) == 0
    out = capsys.readouterr().out
    lst = root / "kitti/raw/eigen_test_files_with_gt.txt"
    assert f"nyu train: first 3 of 300 lines in {root / 'nyu/nyudepthv2_train_files_with_gt.txt'}; 3 samples" in out
    assert f"kitti test: first 3 of 200 lines in {lst}; 2 samples, 0 missing files" in out
    assert "skipped lines: 1 no ground truth" in out and "PROBLEMS" not in out
    # one line past the frames on disk: the missing files are named by list line
    assert main(["data", "check", "--dataset", "nyu", "--root", str(root / "nyu"), "--subset", "4"]) == 1
    out = capsys.readouterr().out
    rgb = _lines(root / "nyu/nyudepthv2_test_files_with_gt.txt")[3].split()[0]
    assert f"missing: line 4: {root / 'nyu/official_splits/test' / rgb}" in out and "PROBLEMS FOUND" in out
    # a frame inside the subset removed from a copy
    copy = tmp_path / "kitti"
    shutil.copytree(root / "kitti", copy)
    gone = copy / "depth/train" / _lines(copy / "raw/eigen_train_files_with_gt.txt")[1].split()[1]
    gone.unlink()
    args = ["--root", str(copy / "raw"), "--depth-root", str(copy / "depth"), "--split", "train", "--subset", "3"]
    assert main(["data", "check", "--dataset", "kitti", *args]) == 1
    out = capsys.readouterr().out
    assert f"missing: line 2: {copy / 'depth' / gone.relative_to(copy / 'depth/train')} (also looked under" in out
    assert "first 3 of 300 lines" in out and "2 samples, 1 missing files" in out
    assert main(["data", "check", "--dataset", "kitti", *args[:-1], "301"]) == 1
    assert "subset=301 is larger than the list, which has 300 lines" in capsys.readouterr().err


def test_eight_bit_depth_png_in_the_subset_is_a_one_line_error(shaped, tmp_path, capsys):
    root, _ = shaped
    copy = tmp_path / "nyu"
    shutil.copytree(root / "nyu", copy)
    ds = NYUDepthV2(copy, "train", subset=2)
    bad = ds.items[1].depth
    Image.fromarray((np.asarray(Image.open(bad)) // 256).astype(np.uint8)).save(bad)
    assert Image.open(bad).mode == "L"
    with pytest.raises(DataError) as err:
        ds[1]
    assert str(err.value) == (f"{bad}: depth PNG has mode 'L' (8-bit or colour); expected a 16-bit single-channel PNG")
    ds[0]  # the other frame is fine
    assert main(["data", "check", "--dataset", "nyu", "--root", str(copy), "--split", "train", "--subset", "2"]) == 1
    out = capsys.readouterr().out
    assert f"bad: {bad}: depth PNG has mode 'L'" in out and "1 samples, 0 missing files, 1 unreadable" in out


def test_cli_synth_paper_shaped(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["data", "synth", "--paper-shaped", "--out", str(out), "--train", "2", "--test", "1"]
    assert main([*args, "--list-lines", "40"]) == 0
    text = capsys.readouterr().out
    assert f"{out / 'nyu'}: nyu lists of 40 train / 40 test lines; the first 2 / 1 exist on disk" in text
    assert f"CLIPDEPTH_DATA_DIR={out} and --subset <= 1" in text
    assert len(_lines(out / "kitti/raw/eigen_test_files_with_gt.txt")) == 40
    assert NYUDepthV2(out / "nyu", "train", subset=2)[1].image.shape == (480, 640, 3)
    assert main([*args, "--list-lines", "40"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "x"), *args[5:], "--family", "indoor"]) == 2
    assert "drop --family" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "y"), "--train", "1", "--test", "1"]) == 2
    assert "--family is required" in capsys.readouterr().err
