"""Depth metrics, per image, with the evaluation crops of NYU and KITTI.

The paper reports image-wise averages (metric per image, then the mean over images), and its "RMSL"
column is the per-image mean *squared* ln error with no square root (a quirk of the authors'
running-average code). We compute both that (``log_mse``) and the true ``rmse_log``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

METRIC_NAMES: tuple[str, ...] = (
    "abs_rel", "sq_rel", "rmse", "rmse_log", "log_mse", "log10", "silog", "d1", "d2", "d3",
)
# Lower is better for errors, higher for the threshold accuracies.
HIGHER_IS_BETTER: frozenset[str] = frozenset({"d1", "d2", "d3"})

# Row/column windows on the 480 x 640 NYU frame; KITTI's Garg crop is given as fractions.
_NYU_FRAME = (480, 640)
_NYU_CROPS = {"eigen_nyu": (45, 471, 41, 601), "depthclip_nyu": (45, 471, 46, 601)}
_GARG_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
# KITTI Eigen crop (Eigen et al. 2014 as reproduced by monodepth/BTS/AdaBins ``eigen_crop``), fractions too.
_EIGEN_KITTI_FRACTIONS = (0.3324324, 0.91351351, 0.0359477, 0.96405229)
CROPS: tuple[str, ...] = ("none", "eigen_nyu", "depthclip_nyu", "garg_kitti", "eigen_kitti")


def crop_mask(name: str, shape: tuple[int, int]) -> np.ndarray:
    """Boolean evaluation-region mask for a ground-truth map of ``shape``.

    NYU windows are defined on the 480 x 640 frame; for other sizes (the demo profile renders
    smaller frames) the window is scaled proportionally. ``garg_kitti`` and ``eigen_kitti`` use the
    usual fractions of the frame, ``int()``-truncated as in BTS/AdaBins.
    """
    if name == "none":
        return np.ones(shape, dtype=bool)
    if len(shape) != 2:
        raise ValueError(f"crop {name!r} needs a 2-D ground-truth map, got shape {tuple(shape)}")
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    if name in _NYU_CROPS:
        t, b, left, r = _NYU_CROPS[name]
        if (h, w) != _NYU_FRAME:
            sy, sx = h / _NYU_FRAME[0], w / _NYU_FRAME[1]
            t, b, left, r = (int(v * s + 0.5) for v, s in ((t, sy), (b, sy), (left, sx), (r, sx)))  # half up
        mask[t:b, left:r] = True
    elif name == "garg_kitti":
        t, b, left, r = _GARG_FRACTIONS
        mask[int(t * h) : int(b * h), int(left * w) : int(r * w)] = True
    elif name == "eigen_kitti":
        t, b, left, r = _EIGEN_KITTI_FRACTIONS
        mask[int(t * h) : int(b * h), int(left * w) : int(r * w)] = True
    else:
        raise ValueError(f"unknown crop {name!r}; valid: {', '.join(CROPS)}")
    return mask


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 array without leading batch/channel dimensions of size 1 (``1 x 1 x H x W`` -> ``H x W``).

    Only *leading* singleton dimensions beyond the two spatial ones go: squeezing every singleton
    would make a transposed ``W x 1`` prediction look like a ``1 x W`` ground truth.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def valid_mask(
    gt: np.ndarray,
    crop: str = "none",
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    max_inclusive: bool = True,
    pred: np.ndarray | None = None,
    min_pred: float | None = None,
) -> np.ndarray:
    """Pixels that are scored: inside ``crop``, ``min < gt <= max`` (``< max`` when not
    ``max_inclusive``), and ``pred > min_pred`` when ``min_pred`` is given."""
    valid = crop_mask(crop, gt.shape) & (gt > min_depth)
    valid &= (gt <= max_depth) if max_inclusive else (gt < max_depth)
    if min_pred is not None:
        if pred is None:
            raise ValueError("min_pred needs pred")
        valid &= pred > min_pred
    return valid


def _scored_pixels(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, crop: str, min_depth: float,
                   max_depth: float, median_scaling: bool, max_inclusive: bool,
                   min_pred: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The (prediction, ground truth) values of one image's valid pixels, median-scaled if asked: the one
    definition of "scored pixel" shared by :func:`compute_metrics` and :func:`pixel_sums`."""
    p, g = _as_numpy(pred), _as_numpy(gt)
    if p.shape != g.shape:
        raise ValueError(
            f"prediction of shape {p.shape} and ground truth of shape {g.shape} differ (after removing leading "
            "batch/channel dimensions of size 1); upsample first and check the prediction is not transposed"
        )
    valid = valid_mask(g, crop, min_depth, max_depth, max_inclusive, p, min_pred)
    if not valid.any():
        raise ValueError("no valid ground-truth pixel in the evaluation region")
    p, g = p[valid], g[valid]
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("prediction has non-positive or non-finite values at valid pixels; clamp first")
    if median_scaling:
        p = p * (np.median(g) / np.median(p))
    return p, g


def compute_metrics(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    crop: str = "none",
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    median_scaling: bool = False,
    max_inclusive: bool = True,
    min_pred: float | None = None,
) -> dict[str, float]:
    """All metrics of one image over its valid pixels.

    Valid: inside ``crop`` and ``min_depth < gt <= max_depth`` (``gt < max_depth`` with
    ``max_inclusive=False``, DepthCLIP's rule), and ``pred > min_pred`` when given (DepthCLIP drops
    the zero canvas outside its input crop that way). ``pred`` must already be at ``gt``'s size; both
    may carry leading batch/channel dimensions of size 1, nothing else is squeezed.
    """
    p, g = _scored_pixels(pred, gt, crop, min_depth, max_depth, median_scaling, max_inclusive, min_pred)
    thresh = np.maximum(g / p, p / g)
    log_err = np.log(p) - np.log(g)
    return {
        "abs_rel": float(np.mean(np.abs(g - p) / g)),
        "sq_rel": float(np.mean((g - p) ** 2 / g)),
        "rmse": float(np.sqrt(np.mean((g - p) ** 2))),
        "rmse_log": float(np.sqrt(np.mean(log_err**2))),
        "log_mse": float(np.mean(log_err**2)),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "silog": float(100.0 * np.sqrt(max(np.mean(log_err**2) - np.mean(log_err) ** 2, 0.0))),
        "d1": float(np.mean(thresh < 1.25)),
        "d2": float(np.mean(thresh < 1.25**2)),
        "d3": float(np.mean(thresh < 1.25**3)),
    }


def average_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Image-wise average (the paper's convention): the mean of each metric over images."""
    rows = list(per_image)
    if not rows:
        raise ValueError("no images to average")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# -- pixel-pooled averages -------------------------------------------------------------------------
# Per-pixel error terms whose sums over all valid pixels of all images give every metric pooled over
# pixels (the authors' ``metrics``; per-image averaging is their ``metrics_ra``). Keeping sums instead
# of the pixels lets a whole test set be pooled in constant memory (NYU: ~150 M valid pixels).
PIXEL_SUM_NAMES: tuple[str, ...] = (
    "n", "abs_rel", "sq_rel", "sq_err", "log_sq", "log", "log10", "d1", "d2", "d3",
)


def pixel_sums(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    crop: str = "none",
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    median_scaling: bool = False,
    max_inclusive: bool = True,
    min_pred: float | None = None,
) -> dict[str, float]:
    """Sums of the per-pixel error terms of one image over its valid pixels, plus their count ``n``.

    Same arguments, valid pixels and median scaling (per image, as monodepth2 does) as
    :func:`compute_metrics`; feed the results of all images to :func:`pooled_metrics`. For one image,
    ``pooled_metrics([pixel_sums(...)])`` equals ``compute_metrics(...)``.
    """
    p, g = _scored_pixels(pred, gt, crop, min_depth, max_depth, median_scaling, max_inclusive, min_pred)
    thresh = np.maximum(g / p, p / g)
    log_err = np.log(p) - np.log(g)
    return {
        "n": float(p.size),
        "abs_rel": float(np.sum(np.abs(g - p) / g)),
        "sq_rel": float(np.sum((g - p) ** 2 / g)),
        "sq_err": float(np.sum((g - p) ** 2)),
        "log_sq": float(np.sum(log_err**2)),
        "log": float(np.sum(log_err)),
        "log10": float(np.sum(np.abs(np.log10(p) - np.log10(g)))),
        "d1": float(np.sum(thresh < 1.25)),
        "d2": float(np.sum(thresh < 1.25**2)),
        "d3": float(np.sum(thresh < 1.25**3)),
    }


def pooled_metrics(sums: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Pixel-pooled metrics: every valid pixel of every image weighs the same (BTS-style formulas on
    the pooled pixels), from the per-image sums of :func:`pixel_sums`. Keys as :data:`METRIC_NAMES`."""
    rows = list(sums)
    if not rows:
        raise ValueError("no images to pool")
    total = {k: float(sum(r[k] for r in rows)) for k in PIXEL_SUM_NAMES}
    n = total["n"]
    log_sq, log_mean = total["log_sq"] / n, total["log"] / n
    return {
        "abs_rel": total["abs_rel"] / n,
        "sq_rel": total["sq_rel"] / n,
        "rmse": float(np.sqrt(total["sq_err"] / n)),
        "rmse_log": float(np.sqrt(log_sq)),
        "log_mse": log_sq,
        "log10": total["log10"] / n,
        "silog": float(100.0 * np.sqrt(max(log_sq - log_mean**2, 0.0))),
        "d1": total["d1"] / n,
        "d2": total["d2"] / n,
        "d3": total["d3"] / n,
    }
