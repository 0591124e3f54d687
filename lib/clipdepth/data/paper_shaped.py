"""A paper-shaped data root: the real NYU and KITTI layouts, full-length lists, a few frames on disk.

Why: the ``paper`` profile reads ``{data_dir}/nyu``, ``{data_dir}/kitti/raw`` and
``{data_dir}/kitti/depth`` with the canonical BTS lists (24,231 / 654 NYU lines, about 23,158 / 697
KITTI Eigen lines). Real data cannot be downloaded here, and a user who has fetched only a handful of
frames rehearses with ``subset=N`` (``--subset N``): full-length lists of which only the first N lines
exist on disk. :func:`write_paper_shaped` builds exactly that situation with procedural scenes
(:mod:`clipdepth.data.synthetic`) rendered at the real frame sizes, so the paper profile's code path,
including list lookup, KB crops of the varying KITTI raw sizes and sparse LiDAR ground truth, runs end
to end on this machine. None of its numbers mean anything for the paper.

Layout written under ``root`` (= ``$CLIPDEPTH_DATA_DIR`` for the paper profile)::

    nyu/nyudepthv2_train_files_with_gt.txt     /kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579
    nyu/nyudepthv2_test_files_with_gt.txt      kitchen/rgb_00045.jpg kitchen/sync_depth_00045.png 518.8579
    nyu/sync/<scene>/rgb_XXXXX.jpg, sync_depth_XXXXX.png                 480x640, uint16 millimetres
    nyu/official_splits/test/<scene type>/rgb_XXXXX.jpg, sync_depth_XXXXX.png   (BTS black border)
    kitti/raw/eigen_{train,test}_files_with_gt.txt
        2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
        2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377
    kitti/raw/<date>/<date>_drive_XXXX_sync/image_02/data/<frame>.png    size and focal of the date
    kitti/depth/{train,val}/<drive>_sync/proj_depth/groundtruth/image_02/<frame>.png  uint16 m*256, sparse

Train frames' depth goes under ``train/``, test frames' under ``val/`` (the reader looks in both).
About one KITTI test line in 15 has ``None`` as depth, as in the Eigen list (45 of 697), starting at
the second line so that a small subset meets one; those frames have an RGB image and no ground truth.
The KITTI train list is shuffled like BTS's, with one frame of each recording date moved to the top so
a subset of five lines meets every raw size. Drive names and dates are real; which drive is in which
split is illustrative, not the Eigen assignment.

Why a manifest: the readers check a list carrying a canonical BTS name against the canonical SHA-256
unless a manifest (``clipdepth_dataset.json``) in the same folder records the list's own checksum
(:mod:`clipdepth.data.splits`). These lists have the canonical names and shapes but invented frames,
so the writer records their checksums in a manifest beside them, the mechanism the ``.mat`` exporter
uses too; the readers then find and verify them locally and never try a download. A user with a
list of their own does the same, or passes ``split_file=`` / ``--split-file`` with a name of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from clipdepth._files import atomic_write_json, atomic_write_text, make_temp_dir
from clipdepth.data.common import MANIFEST_NAME, sha256_file, write_depth_png
from clipdepth.data.nyu import bts_border, encode_jpeg
from clipdepth.data.specs import KITTI, NYU
from clipdepth.data.splits import split_name
from clipdepth.data.synthetic import TEST_INDEX_OFFSET, render_indoor, render_outdoor

__all__ = [
    "KITTI_DATES",
    "KITTI_TEST_LINES",
    "KITTI_TRAIN_LINES",
    "LIST_KEYS",
    "NYU_TEST_LINES",
    "NYU_TRAIN_LINES",
    "write_paper_shaped",
]

#: Line counts of the canonical BTS lists (the KITTI train count as commonly reported for Eigen/BTS).
NYU_TRAIN_LINES = 24_231
NYU_TEST_LINES = 654
KITTI_TRAIN_LINES = 23_158
KITTI_TEST_LINES = 697
#: Eigen test lines without ground truth (``None``) in the 697-line list.
KITTI_TEST_WITHOUT_GT = 45
#: Keys of ``list_lines``.
LIST_KEYS = ("nyu_train", "nyu_test", "kitti_train", "kitti_test")
_FULL_LINES = dict(zip(LIST_KEYS, (NYU_TRAIN_LINES, NYU_TEST_LINES, KITTI_TRAIN_LINES, KITTI_TEST_LINES), strict=True))

#: Raw frame size (height, width) and left-camera focal length (pixels) of each KITTI recording date.
KITTI_DATES: dict[str, tuple[tuple[int, int], float]] = {
    "2011_09_26": ((375, 1242), 721.5377),
    "2011_09_28": ((370, 1224), 707.0493),
    "2011_09_29": ((374, 1238), 718.3351),
    "2011_09_30": ((370, 1226), 707.0912),
    "2011_10_03": ((376, 1241), 718.856),
}
_KITTI_TEST_DRIVES = {
    "2011_09_26": (2, 9, 13, 20, 23, 27, 29, 36, 46, 48, 52, 56, 59, 64, 84, 86, 93, 96, 101, 106, 117),
    "2011_09_28": (2,),
    "2011_09_29": (71,),
    "2011_09_30": (16,),
    "2011_10_03": (47,),
}
_KITTI_TRAIN_DRIVES = {
    "2011_09_26": (1, 5, 11, 14, 15, 17, 18, 19, 22, 28, 32, 35, 39, 51, 57, 60, 61, 70, 79, 87, 91, 95, 104, 113),
    "2011_09_28": (1,),
    "2011_09_29": (4, 26),
    "2011_09_30": (18, 20, 27, 28, 33, 34),
    "2011_10_03": (27, 34, 42),
}
# NYU: the real train list covers 249 scenes of these types (the test folders are the bare types).
_NYU_SCENE_TYPES = (
    "basement", "bathroom", "bedroom", "bookstore", "cafe", "classroom", "computer_lab", "dining_room",
    "furniture_store", "home_office", "kitchen", "living_room", "office", "playroom", "study",
)  # fmt: skip
_NYU_TRAIN_SCENES = 249
_NYU_LABELED_FRAMES = 1449


def _u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _frame_numbers(rng: np.random.Generator, count: int, first: int = 0) -> list[int]:
    """``count`` distinct increasing frame numbers with irregular gaps, as in the sampled real lists."""
    return [first + 3 * k + int(j) for k, j in enumerate(rng.integers(0, 3, size=count))]


# ---------------------------------------------------------------------------------------------
# List lines
# ---------------------------------------------------------------------------------------------


def _nyu_train_lines(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(scene, file number) per line, shuffled like the BTS train list."""
    # (capped well below the 15 * 99 * 3 possible names, so drawing unique names always ends)
    n_scenes = max(1, min(count, round(count * _NYU_TRAIN_SCENES / NYU_TRAIN_LINES), 2000))
    scenes: list[str] = []
    while len(scenes) < n_scenes:
        kind = _NYU_SCENE_TYPES[len(scenes) % len(_NYU_SCENE_TYPES)]
        name = f"{kind}_{int(rng.integers(1, 100)):04d}{'' if rng.random() < 0.5 else 'ab'[int(rng.integers(2))]}"
        if name not in scenes:
            scenes.append(name)
    per_scene = [count // n_scenes + (1 if s < count % n_scenes else 0) for s in range(n_scenes)]
    lines = [
        (scene, number)
        for scene, n in zip(scenes, per_scene, strict=True)
        for number in _frame_numbers(rng, n, first=int(rng.integers(0, 50)))
    ]
    return [lines[i] for i in rng.permutation(len(lines))]


def _nyu_test_lines(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(scene type, 0-based labeled-frame index) per line, grouped by type like the official split."""
    pool = max(_NYU_LABELED_FRAMES, 2 * count)
    frames = np.sort(rng.choice(pool, size=count, replace=False))
    types = sorted(_NYU_SCENE_TYPES)
    lines = [(types[int(f) * len(types) // pool], int(f)) for f in frames]
    return sorted(lines)


def _kitti_drive_names(drives: dict[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    return [(date, f"{date}_drive_{n:04d}_sync") for date, numbers in drives.items() for n in numbers]


def _kitti_train_lines(rng: np.random.Generator, count: int) -> list[tuple[str, str, int]]:
    """(date, drive, frame) per line: shuffled, one line of each date first (every raw size early)."""
    drives = _kitti_drive_names(_KITTI_TRAIN_DRIVES)
    per_drive = [count // len(drives) + (1 if d < count % len(drives) else 0) for d in range(len(drives))]
    lines = [
        (date, drive, frame)
        for (date, drive), n in zip(drives, per_drive, strict=True)
        for frame in _frame_numbers(rng, n, first=5)
    ]
    lines = [lines[i] for i in rng.permutation(len(lines))]
    front: list[int] = []
    for date in KITTI_DATES:
        first = next((i for i, line in enumerate(lines) if line[0] == date), None)
        if first is not None:
            front.append(first)
    moved = set(front)
    return [lines[i] for i in front] + [line for i, line in enumerate(lines) if i not in moved]


def _kitti_test_lines(rng: np.random.Generator, count: int) -> tuple[list[tuple[str, str, int]], set[int]]:
    """(date, drive, frame) per line grouped by drive, and the 0-based positions of ``None`` lines."""
    drives = _kitti_drive_names(_KITTI_TEST_DRIVES)
    lines = []
    for d, (date, drive) in enumerate(drives):
        n = (d + 1) * count // len(drives) - d * count // len(drives)
        frames = _frame_numbers(rng, n, first=5)
        lines.extend((date, drive, frames[i]) for i in rng.permutation(n))
    n_none = min(count - 1, round(count * KITTI_TEST_WITHOUT_GT / KITTI_TEST_LINES))
    none_at = {1 + k * count // n_none for k in range(n_none)} if n_none > 0 else set()
    return lines, none_at


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _write_list(folder: Path, dataset: str, split: str, lines: list[str]) -> dict:
    path = folder / split_name(dataset, split)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return {"file": path.name, "sha256": sha256_file(path), "count": len(lines)}


def _write_nyu(root: Path, n_train: int, n_test: int, lines: dict[str, int], seed: int) -> dict:
    rng = np.random.default_rng([seed, 0])
    focal = f"{NYU.focal:.4f}"
    splits = {}
    train = _nyu_train_lines(rng, lines["nyu_train"])
    test = _nyu_test_lines(rng, lines["nyu_test"])
    for split, entries, n_disk, base, prefix in (
        ("train", train, n_train, root / "sync", "/"),  # the BTS train list starts its paths with '/'
        ("test", test, n_test, root / "official_splits" / "test", ""),
    ):
        text = []
        for i, (scene, number) in enumerate(entries):
            rgb_rel, depth_rel = f"{scene}/rgb_{number:05d}.jpg", f"{scene}/sync_depth_{number:05d}.png"
            text.append(f"{prefix}{rgb_rel} {prefix}{depth_rel} {focal}")
            if i < n_disk:
                s = render_indoor(seed, i if split == "train" else TEST_INDEX_OFFSET + i)
                image = _u8(s.image)
                if split == "test":
                    image = bts_border(image)  # the official test export blacks out the Kinect border
                (base / scene).mkdir(parents=True, exist_ok=True)
                (base / rgb_rel).write_bytes(encode_jpeg(image))
                write_depth_png(base / depth_rel, s.depth, NYU.depth_scale)
        splits[split] = {**_write_list(root, "nyu", split, text), "on_disk": min(n_disk, len(entries))}
    return splits


def _render_kitti(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 and sparse depth (m) at a raw size; rows beyond the renderer's 375 repeat the top row."""
    h, w = size
    s = render_outdoor(seed, index, (min(h, 375), w), lidar=True)
    image, depth = _u8(s.image), s.depth
    if h > image.shape[0]:
        pad = h - image.shape[0]
        image = np.concatenate([np.repeat(image[:1], pad, axis=0), image])
        depth = np.concatenate([np.zeros((pad, w), depth.dtype), depth])
    return image, depth


def _write_kitti(raw: Path, depth: Path, n_train: int, n_test: int, lines: dict[str, int], seed: int) -> dict:
    rng = np.random.default_rng([seed, 1])
    train = _kitti_train_lines(rng, lines["kitti_train"])
    test, none_at = _kitti_test_lines(rng, lines["kitti_test"])
    splits = {}
    for split, entries, n_disk, sub, no_gt in (
        ("train", train, n_train, "train", set()),
        ("test", test, n_test, "val", none_at),
    ):
        text = []
        for i, (date, drive, number) in enumerate(entries):
            size, focal = KITTI_DATES[date]
            frame = f"{number:010d}.png"
            rgb_rel = f"{date}/{drive}/image_02/data/{frame}"
            depth_rel = f"{drive}/proj_depth/groundtruth/image_02/{frame}"
            text.append(f"{rgb_rel} {'None' if i in no_gt else depth_rel} {focal}")
            if i < n_disk:
                image, metres = _render_kitti(seed, i if split == "train" else TEST_INDEX_OFFSET + i, size)
                (raw / rgb_rel).parent.mkdir(parents=True, exist_ok=True)
                # fast zlib level: the bytes decode the same, and rehearsal roots are written often in tests
                Image.fromarray(image).save(raw / rgb_rel, format="PNG", compress_level=1)
                if i not in no_gt:
                    (depth / sub / depth_rel).parent.mkdir(parents=True, exist_ok=True)
                    write_depth_png(depth / sub / depth_rel, metres, KITTI.depth_scale)
        entry = _write_list(raw, "kitti", split, text)
        splits[split] = {**entry, "on_disk": min(n_disk, len(entries)), "without_gt": len(no_gt)}
    return splits


def _list_lines(n_train: int, n_test: int, list_lines: dict[str, int] | None) -> dict[str, int]:
    given = dict(list_lines or {})
    unknown = sorted(set(given) - set(LIST_KEYS))
    if unknown:
        raise ValueError(f"list_lines has unknown key(s) {unknown}; valid: {', '.join(LIST_KEYS)}")
    out = {**_FULL_LINES, **{k: int(v) for k, v in given.items()}}
    for key, value in out.items():
        need = max(1, n_train if key.endswith("train") else n_test)
        if value < need:
            raise ValueError(
                f"list_lines[{key!r}] = {value} is shorter than the {need} frame(s) to write; "
                f"lists must have at least max(1, n_{key.rsplit('_', 1)[1]}) lines"
            )
    return out


def write_paper_shaped(
    root: str | Path,
    n_train: int = 3,
    n_test: int = 3,
    list_lines: dict[str, int] | None = None,
    seed: int = 0,
) -> dict:
    """Write ``root/nyu``, ``root/kitti/raw`` and ``root/kitti/depth`` in the paper's layouts.

    Each of the four lists has the full canonical length (or ``list_lines[key]`` lines, keys
    :data:`LIST_KEYS`); the files of the first ``n_train`` / ``n_test`` lines exist on disk, the rest
    do not (for KITTI test ``None`` lines among them, only the RGB image). Point the paper profile at
    it with ``CLIPDEPTH_DATA_DIR=root`` and open splits with ``subset`` <= those counts. Deterministic
    in ``seed``. ``nyu`` and ``kitti`` are built in a temporary folder and renamed into place; an
    existing ``root/nyu`` or ``root/kitti`` is refused rather than overwritten.

    Returns ``{"root": root, "nyu": {...}, "kitti": {...}}`` with each dataset's root(s) and, per
    split, the list file name, SHA-256, line count and number of lines on disk.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    lines = _list_lines(n_train, n_test, list_lines)
    root = Path(root)
    for name in ("nyu", "kitti"):
        if (root / name).exists():
            raise ValueError(f"{root / name}: already exists; write the paper-shaped data into another folder")
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root / ".paper_shaped")
    try:
        nyu, raw, depth = tmp / "nyu", tmp / "kitti" / "raw", tmp / "kitti" / "depth"
        for folder in (nyu, raw, depth):
            folder.mkdir(parents=True)
        common = {"kind": "paper_shaped", "seed": int(seed), "complete": True}
        nyu_splits = _write_nyu(nyu, n_train, n_test, lines, seed)
        atomic_write_json(nyu / MANIFEST_NAME, {**common, "dataset": "nyu", "splits": nyu_splits}, indent=2)
        kitti_splits = _write_kitti(raw, depth, n_train, n_test, lines, seed)
        atomic_write_json(raw / MANIFEST_NAME, {**common, "dataset": "kitti", "splits": kitti_splits}, indent=2)
        for name in ("nyu", "kitti"):
            os.replace(tmp / name, root / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "root": root,
        "nyu": {"root": root / "nyu", "splits": nyu_splits},
        "kitti": {"root": root / "kitti" / "raw", "depth_root": root / "kitti" / "depth", "splits": kitti_splits},
    }
