"""Per-dataset constants in one place.

Readers, augmentation, bins and the evaluation protocol all need the same handful of numbers (depth
range, from :data:`clipdepth.vocab.DATASET_RANGES`; crop sizes, PNG depth scale); keeping them in one
frozen record stops them drifting apart between modules. Values follow the authors' configuration
(BTS/AdaBins data loader, DESIGN.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipdepth.vocab import DATASET_RANGES


@dataclass(frozen=True)
class DatasetSpec:
    """Constants of one dataset as used by the paper's code.

    ``train_crop`` and ``test_size`` are (height, width). ``depth_scale`` divides the uint16 PNG
    value to give metres. ``eval_crop`` names the evaluation crop implemented by the metrics code.
    """

    name: str
    min_depth: float
    max_depth: float
    eval_crop: str
    train_crop: tuple[int, int]
    test_size: tuple[int, int]
    depth_scale: float
    focal: float
    rotation_deg: float
    brightness: tuple[float, float]


NYU = DatasetSpec(
    name="nyu",
    min_depth=DATASET_RANGES["nyu"][0],
    max_depth=DATASET_RANGES["nyu"][1],
    eval_crop="eigen_nyu",
    train_crop=(416, 544),
    test_size=(480, 640),
    depth_scale=1000.0,
    focal=518.8579,
    rotation_deg=2.5,
    brightness=(0.75, 1.25),
)

KITTI = DatasetSpec(
    name="kitti",
    min_depth=DATASET_RANGES["kitti"][0],
    max_depth=DATASET_RANGES["kitti"][1],
    eval_crop="garg_kitti",
    train_crop=(352, 704),
    test_size=(352, 1216),
    depth_scale=256.0,
    focal=721.5377,
    rotation_deg=1.0,
    brightness=(0.9, 1.1),
)

SPECS: dict[str, DatasetSpec] = {"nyu": NYU, "kitti": KITTI}

#: NYU training border crop (left, top, right, bottom) removing the unregistered Kinect border,
#: applied before augmentation (AdaBins/BTS loader). The result is 565 wide and 427 high.
NYU_BORDER_CROP: tuple[int, int, int, int] = (43, 45, 608, 472)

#: KITTI "KB crop" size (height, width): bottom-aligned, horizontally centred.
KB_CROP: tuple[int, int] = (352, 1216)


def get_spec(name: str) -> DatasetSpec:
    """Look up a spec by name (``nyu`` or ``kitti``); a clear error for anything else."""
    try:
        return SPECS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SPECS)}") from None
