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


def interpolation_matrix(n_out: int, n_in: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """``n_out x n_in`` matrix of 1-D linear interpolation with ``align_corners=True``.

    Bilinear upsampling is separable: ``upsample(P) == A_h @ P @ A_w.T`` for every channel, which is
    what :class:`SILogTarget` uses (two small matrix products instead of PyTorch's interpolation
    kernel and its scatter-add backward). Built in float64, then cast.
    """
    if n_out == 1:
        pos = torch.zeros(1, dtype=torch.float64)
    else:
        pos = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
    lo = pos.floor().clamp(max=n_in - 1).long()
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = pos - lo
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    mat.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    mat.index_put_((rows, hi), frac, accumulate=True)
    return mat.to(dtype=dtype, device=device)


class _UpsampledSILog(torch.autograd.Function):
    """SILog of a low-resolution prediction against a prepared target, with a closed-form backward.

    Forward: ``up = A_h P A_w^T``; ``g = (ln up - ln gt) * mask``; ``D = sum(g^2)/n - lam (sum(g)/n)^2``;
    ``loss = alpha sqrt(D)``. Backward: ``dloss/dup = alpha (g - lam mean(g)) mask / (n sqrt(D) up)``,
    then ``dloss/dP = A_h^T (dloss/dup) A_w``.
    """

    @staticmethod
    def forward(ctx, pred, a_h, a_w, mask, log_gt, count, alpha, lam):  # type: ignore[override]
        up = a_h @ pred @ a_w.T if a_h is not None else pred
        # full-resolution work in place: every fresh batch-sized buffer costs page faults on CPU
        g = torch.log(up)
        g.sub_(log_gt).mul_(mask)
        flat = g.view(-1)
        mean = flat.sum() / count
        var = torch.dot(flat, flat) / count - lam * mean * mean
        root = torch.sqrt(var)
        ctx.save_for_backward(up, g, mean, root, a_h, a_w, mask)
        ctx.consts = (count, alpha, lam)
        return alpha * root

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        up, g, mean, root, a_h, a_w, mask = ctx.saved_tensors
        count, alpha, lam = ctx.consts
        scale = grad_out * alpha / (count * root)
        grad_up = torch.add(g, mask, alpha=float(-lam * mean))  # g is 0 off the mask: (g - lam mean) mask
        grad_up.mul_(scale).div_(up)
        grad_pred = a_h.T @ grad_up @ a_w if a_h is not None else grad_up
        return grad_pred, None, None, None, None, None, None, None


class SILogTarget:
    """One batch's ground truth, prepared once for every prediction scored against it.

    The mask ``gt > min_depth``, ``ln gt``, the pixel count and the interpolation matrices depend on
    the batch only, so rows trained in lockstep on the same batch share them; each row then pays for
    two small matrix products, one logarithm per pixel and a closed-form backward. The value equals
    :func:`silog_loss` (the authors' computation) up to float32 rounding of the upsampling and of
    the reduction order (relative 1e-6; tested), and the gradient likewise.
    """

    def __init__(self, gt: torch.Tensor, pred_size: tuple[int, int], min_depth: float = 1e-3,
                 alpha: float = 10.0, lam: float = 0.85) -> None:
        if gt.ndim == 3:
            gt = gt.unsqueeze(1)
        mask = gt > min_depth
        count = int(mask.sum())
        if count == 0:
            raise ValueError("SILog loss: the batch has no ground-truth pixel above min_depth")
        height, width = gt.shape[-2:]
        if tuple(pred_size) == (height, width):
            self.a_h = self.a_w = None
        else:
            self.a_h = interpolation_matrix(height, pred_size[0], gt.dtype, gt.device)
            self.a_w = interpolation_matrix(width, pred_size[1], gt.dtype, gt.device)
        self.mask = mask.to(gt.dtype)
        self.log_gt = torch.where(mask, torch.log(gt.clamp(min=min_depth)), torch.zeros((), dtype=gt.dtype))
        self.count = float(count)
        self.alpha, self.lam = float(alpha), float(lam)
        self.pred_size = tuple(pred_size)

    def __call__(self, pred: torch.Tensor) -> torch.Tensor:
        """The SILog loss of ``pred`` (B x 1 x h x w at ``pred_size``) against this target."""
        if tuple(pred.shape[-2:]) != self.pred_size:
            raise ValueError(f"prediction of size {tuple(pred.shape[-2:])}, target prepared for {self.pred_size}")
        return _UpsampledSILog.apply(pred, self.a_h, self.a_w, self.mask, self.log_gt, self.count,
                                     self.alpha, self.lam)
