"""The evaluation protocols: flip TTA, sanitising, upsampling, DepthCLIP's placement."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipdepth.eval.metrics import valid_mask
from clipdepth.eval.protocols import depthclip_box, evaluate, flip_average, predict_depthclip_protocol


def test_flip_average_sanitises_then_flips_back():
    pred = torch.tensor([[[[1.0, float("nan"), 20.0]]]])
    flipped = torch.tensor([[[[3.0, float("inf"), 5.0]]]])  # its un-flipped order is 5, inf, 3
    out = flip_average(pred, flipped, 0.5, 10.0)
    assert out.flatten().tolist() == pytest.approx([(1 + 5) / 2, (0.5 + 10) / 2, (10 + 3) / 2])


def test_evaluate_perfect_constant_and_flip_symmetry():
    gt = np.full((64, 96), 3.0)
    samples = [SimpleNamespace(image=np.random.rand(64, 96, 3).astype(np.float32), depth=gt, name="a")]
    result = evaluate(lambda x: torch.full((1, 1, 2, 3), 3.0), samples, 1e-3, 10.0, "none", keep_examples=1,
                      progress=False)
    assert result.mean["abs_rel"] == pytest.approx(0.0) and result.mean["d1"] == 1.0
    assert result.names == ["a"] and result.examples[0]["pred"].shape == (64, 96)


def test_depthclip_box_and_effective_region():
    assert depthclip_box(480, 640) == (60, 56, 604, 472)
    image = torch.rand(1, 3, 480, 640)
    seen = []

    def predict(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.full((1, 1, x.shape[-2] // 32, x.shape[-1] // 32), 2.0)

    canvas = predict_depthclip_protocol(predict, image, 1e-3, 10.0)
    assert seen == [(416, 544), (416, 544)]
    full = canvas.squeeze().numpy()
    # research notes: only rows 56-470 x cols 60-600 are scored -> 415 x 541 pixels
    region = valid_mask(np.full((480, 640), 5.0), "depthclip_nyu", 1e-3, 10.0, False, full, 1e-3)
    assert region.sum() == 415 * 541


def test_scaled_box_for_demo_frames():
    left, top, right, bottom = depthclip_box(240, 320)
    assert (right - left) % 32 == 0 and (bottom - top) % 32 == 0
    assert right <= 320 and bottom <= 240
