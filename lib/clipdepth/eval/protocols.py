"""Evaluation protocols: the authors' (AdaBins-style) one and DepthCLIP's own.

``authors``: batch 1; the model runs on the image and its mirror; each low-resolution prediction has
NaN set to min and +-inf to max and is clamped to [min, max]; the mirrored one is flipped back; the
two are averaged at low resolution, upsampled bilinearly (``align_corners=True``) to the ground truth
and scored inside the dataset's crop with ``min < gt <= max``.

``depthclip``: the NYU input is the fixed box (60, 56, 604, 472) of the 640 x 480 frame; flip TTA at
low resolution; upsampled to the box and pasted into a zero canvas; scored in the 45:471 x 46:601
window with ``1e-3 < gt < 10`` and ``pred > 1e-3`` (so pixels outside the box are not scored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipdepth.eval.metrics import average_metrics, compute_metrics, pixel_sums, pooled_metrics
from clipdepth.train.losses import upsample

Predictor = Callable[[torch.Tensor], torch.Tensor]
PROTOCOLS: tuple[str, ...] = ("authors", "depthclip")
# DepthCLIP's NYU input box (left, top, right, bottom) on the 640 x 480 frame: 544 x 416.
DEPTHCLIP_BOX = (60, 56, 604, 472)


def sanitise(pred: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """NaN -> min, +-inf -> max, then clamp to [min, max] (the authors' metric preprocessing)."""
    pred = torch.nan_to_num(pred, nan=min_depth, posinf=max_depth, neginf=max_depth)
    return pred.clamp(min_depth, max_depth)


def flip_average(
    pred: torch.Tensor, pred_of_flipped: torch.Tensor, min_depth: float, max_depth: float
) -> torch.Tensor:
    """Average a prediction with the flipped-back prediction of the mirrored input, at low resolution."""
    back = sanitise(pred_of_flipped, min_depth, max_depth).flip(-1)
    return 0.5 * (sanitise(pred, min_depth, max_depth) + back)


def predict_with_flip(
    predict: Predictor, images: torch.Tensor, min_depth: float, max_depth: float
) -> torch.Tensor:
    """Flip test-time augmentation around any low-resolution predictor."""
    return flip_average(predict(images), predict(images.flip(-1)), min_depth, max_depth)


def depthclip_box(height: int, width: int, stride: int = 32) -> tuple[int, int, int, int]:
    """DepthCLIP's input box, scaled to frames other than 480 x 640 (demo) and kept stride-divisible."""
    left, top, right, bottom = DEPTHCLIP_BOX
    if (height, width) == (480, 640):
        return DEPTHCLIP_BOX
    sx, sy = width / 640, height / 480
    left, top = round(left * sx), round(top * sy)
    w = max(stride, round((right - left) * sx / stride) * stride)
    h = max(stride, round((bottom - top) * sy / stride) * stride)
    left, top = min(left, width - w), min(top, height - h)
    return left, top, left + w, top + h


@dataclass
class EvalResult:
    """Per-image metrics, their image-wise mean, and a few full-resolution predictions for figures.

    ``low_res`` (only with ``evaluate(..., keep_low_res=True)``): per image, the low-resolution
    prediction the full-resolution one is upsampled from (``h x w``, the model's dtype; flip-averaged and
    sanitised under the authors' protocol; for DepthCLIP's protocol the flip-averaged prediction of
    its input box). Off by default: on 654 NYU images it is ~4 MB at 15 x 20 cells, but callers that
    keep every result should not pay for it unasked.
    """

    per_image: list[dict[str, float]]
    names: list[str]
    mean: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)
    low_res: list[np.ndarray] | None = None
    pooled: dict[str, float] = field(default_factory=dict)


class Scores:
    """Accumulates one run's evaluation image by image: per-image metrics (their mean is the paper's
    number, the authors' ``metrics_ra``), per-image pixel sums (pooled over all valid pixels: the
    authors' ``metrics``), names, kept examples and, optionally, the low-resolution predictions.

    Every evaluation path (the live protocol here, the trainer's cached features, lockstep's shared
    features) scores through this one class, so they cannot drift apart.
    """

    def __init__(self, keep_examples: int = 0, keep_low_res: bool = False) -> None:
        self.rows: list[dict[str, float]] = []
        self.sums: list[dict[str, float]] = []
        self.names: list[str] = []
        self.examples: list[dict[str, Any]] = []
        self.low_res: list[np.ndarray] | None = [] if keep_low_res else None
        self.keep_examples = keep_examples

    def add(self, sample: Any, full: torch.Tensor, gt: np.ndarray, low: torch.Tensor | None = None,
            **metric_args: Any) -> dict[str, float]:
        """Score the full-resolution prediction ``full`` of ``sample`` against ``gt`` (compute_metrics args)."""
        metrics = compute_metrics(full, gt, **metric_args)
        self.rows.append(metrics)
        self.sums.append(pixel_sums(full, gt, **metric_args))
        self.names.append(str(sample.name))
        if self.low_res is not None and low is not None:
            self.low_res.append(low.reshape(low.shape[-2:]).cpu().numpy().copy())
        if len(self.examples) < self.keep_examples:
            self.examples.append({"name": str(sample.name), "image": sample.image, "depth": gt,
                                  "pred": full.squeeze().cpu().numpy()})
        return metrics

    def result(self) -> EvalResult:
        return EvalResult(self.rows, self.names, average_metrics(self.rows), self.examples, self.low_res,
                          pooled_metrics(self.sums))


def sample_tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """An H x W x 3 image in [0, 1] as a 1 x 3 x H x W float tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().unsqueeze(0).to(device)


@torch.no_grad()
def evaluate(
    predict: Predictor,
    samples: Iterable[Any],
    min_depth: float,
    max_depth: float,
    crop: str,
    protocol: str = "authors",
    flip: bool = True,
    device: torch.device | str = "cpu",
    keep_examples: int = 0,
    progress: bool = True,
    total: int | None = None,
    keep_low_res: bool = False,
) -> EvalResult:
    """Score a low-resolution predictor on samples with ``.image`` (H x W x 3 in [0, 1]),
    ``.depth`` (H x W metres, 0 = no ground truth) and ``.name``. ``keep_low_res`` also returns each
    image's low-resolution prediction (see :class:`EvalResult`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    scores = Scores(keep_examples, keep_low_res)
    if total is None and isinstance(samples, Sequence):
        total = len(samples)
    for sample in tqdm(samples, total=total, desc="evaluate", disable=not progress, leave=False):
        image = sample_tensor(sample.image, device)
        gt = np.asarray(sample.depth, dtype=np.float64)
        if protocol == "depthclip":
            full, low = _depthclip_protocol(predict, image, max_depth, flip)
            scores.add(sample, full, gt, low, crop="depthclip_nyu", min_depth=min_depth, max_depth=max_depth,
                       max_inclusive=False, min_pred=min_depth)
        else:
            low = predict_with_flip(predict, image, min_depth, max_depth) if flip else sanitise(
                predict(image), min_depth, max_depth)
            full = upsample(low, gt.shape)
            scores.add(sample, full, gt, low, crop=crop, min_depth=min_depth, max_depth=max_depth)
    return scores.result()


def predict_depthclip_protocol(
    predict: Predictor, image: torch.Tensor, min_depth: float, max_depth: float, flip: bool = True
) -> torch.Tensor:
    """DepthCLIP's placement: predict on the fixed box, upsample to it, paste into a zero canvas."""
    return _depthclip_protocol(predict, image, max_depth, flip)[0]


def _depthclip_protocol(
    predict: Predictor, image: torch.Tensor, max_depth: float, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(full-resolution canvas, low-resolution box prediction) of DepthCLIP's protocol."""
    height, width = image.shape[-2:]
    left, top, right, bottom = depthclip_box(height, width)
    box = image[..., top:bottom, left:right]
    if flip:
        low = 0.5 * (predict(box) + predict(box.flip(-1)).flip(-1))  # DepthCLIP does not clamp
    else:
        low = predict(box)
    canvas = torch.zeros(1, 1, height, width, dtype=low.dtype, device=low.device)
    canvas[..., top:bottom, left:right] = upsample(low, (bottom - top, right - left))
    return canvas.clamp(max=max_depth), low
