"""Open the train/test split a resolved experiment points at, in either profile.

The demo profile's data root holds procedural scenes rendered (once, then reused) into the real NYU or
KITTI layout at the profile's test size; the paper profile's root is the real dataset. Either way the
same readers return the samples, so the demo exercises the paper's code path.

``subset=N`` opens only the first N lines of the split's list (a rehearsal of the paper profile on a
few frames, see :mod:`clipdepth.data.paper_shaped`); the reader's ``list_length`` keeps the full
count, and :func:`subset_label` turns both into the label reports print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipdepth.data.base import subset_label
from clipdepth.data.kitti import KITTIEigen
from clipdepth.data.nyu import NYUDepthV2
from clipdepth.data.synthetic import ensure_synthetic_dataset

# Demo scene counts: enough for training to show a trend, small enough for minutes on two cores.
DEMO_TRAIN_FRAMES = 48
DEMO_TEST_FRAMES = 12
DEMO_SCENE_SEED = 0

__all__ = ["DEMO_SCENE_SEED", "DEMO_TEST_FRAMES", "DEMO_TRAIN_FRAMES", "open_split", "subset_label"]


def open_split(
    resolved: Any,
    split: str,
    n_train: int = DEMO_TRAIN_FRAMES,
    n_test: int = DEMO_TEST_FRAMES,
    *,
    subset: int | None = None,
) -> NYUDepthV2 | KITTIEigen:
    """The reader for ``split`` ("train" or "test") of ``resolved`` (an ``experiments.ResolvedExperiment``).

    With ``resolved.synthetic`` set, ``n_train`` + ``n_test`` scenes are first rendered at
    ``resolved.test_size`` into a sub-folder of ``resolved.data_root`` named after those parameters,
    unless an identical copy is already there. ``subset=N`` reads the first N lines of the list only
    (None = all); more than the list holds is a one-line DataError naming the list.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(resolved.data_root)
    if resolved.synthetic:
        # one folder per scene set, so runs with other counts or sizes never re-render a shared copy
        h, w = resolved.test_size
        root = root / f"train{n_train}_test{n_test}_{h}x{w}_seed{DEMO_SCENE_SEED}"
        ensure_synthetic_dataset(resolved.synthetic, root, n_train, n_test, seed=DEMO_SCENE_SEED, size=(h, w))
    if resolved.dataset == "nyu":
        return NYUDepthV2(root, split, fetch=not resolved.synthetic, subset=subset)
    # the synthetic writer puts the annotated depth under the raw root, where the reader looks by default
    return KITTIEigen(root, resolved.depth_root, split, fetch=not resolved.synthetic, subset=subset)
