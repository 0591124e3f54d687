"""Training loss: scale-invariant log loss (SILog) as in AdaBins and the authors' code."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=True`` -- the resize every stage of the protocol uses."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=True)


def silog_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    min_depth: float = 1e-3,
    alpha: float = 10.0,
    lam: float = 0.85,
) -> torch.Tensor:
    """``alpha * sqrt(mean(g^2) - lam * mean(g)^2)`` with ``g = ln pred - ln gt``.

    ``pred`` (B x 1 x h x w, any resolution) is upsampled to the ground truth's size first; pixels
    with ``gt > min_depth`` across the whole batch count (no max mask, no clamping: the authors'
    training setting).
    """
    if gt.ndim == 3:
        gt = gt.unsqueeze(1)
    pred = upsample(pred, tuple(gt.shape[-2:]))
    mask = gt > min_depth
    if not bool(mask.any()):
        raise ValueError("SILog loss: the batch has no ground-truth pixel above min_depth")
    g = torch.log(pred[mask]) - torch.log(gt[mask])
    return alpha * torch.sqrt((g**2).mean() - lam * g.mean() ** 2)
