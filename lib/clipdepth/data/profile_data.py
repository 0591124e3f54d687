"""Open the train/test split a resolved experiment points at, in either profile.

The demo profile's data root holds procedural scenes rendered (once, then reused) into the real NYU or
KITTI layout at the profile's test size; the paper profile's root is the real dataset. Either way the
same readers return the samples, so the demo exercises the paper's code path.
"""

from __future__ import annotations

from typing import Any

from .kitti import KITTIEigen
from .nyu import NYUDepthV2
from .synthetic import ensure_synthetic_dataset

# Demo scene counts: enough for training to show a trend, small enough for minutes on two cores.
DEMO_TRAIN_FRAMES = 48
DEMO_TEST_FRAMES = 12
DEMO_SCENE_SEED = 0


def open_split(
    resolved: Any,
    split: str,
    n_train: int = DEMO_TRAIN_FRAMES,
    n_test: int = DEMO_TEST_FRAMES,
) -> NYUDepthV2 | KITTIEigen:
    """The reader for ``split`` ("train" or "test") of ``resolved`` (an ``experiments.ResolvedExperiment``).

    With ``resolved.synthetic`` set, the scenes are first rendered into ``resolved.data_root`` at
    ``resolved.test_size`` unless an identical copy is already there (``n_train``/``n_test`` frames).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if resolved.synthetic:
        ensure_synthetic_dataset(resolved.synthetic, resolved.data_root, n_train, n_test,
                                 seed=DEMO_SCENE_SEED, size=tuple(resolved.test_size))
    if resolved.dataset == "nyu":
        return NYUDepthV2(resolved.data_root, split, fetch=not resolved.synthetic)
    depth_root = resolved.depth_root
    if resolved.synthetic and depth_root is None:
        depth_root = None  # the synthetic writer puts annotated depth under the raw root
    return KITTIEigen(resolved.data_root, depth_root, split, fetch=not resolved.synthetic)
