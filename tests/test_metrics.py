"""Metrics against hand-worked values, and the evaluation crops (issue 2, must-show 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipdepth.eval.metrics import METRIC_NAMES, average_metrics, compute_metrics, crop_mask, valid_mask


def test_perfect_prediction():
    gt = np.linspace(0.5, 9.5, 100).reshape(10, 10)
    m = compute_metrics(gt, gt, max_depth=10.0)
    assert set(m) == set(METRIC_NAMES)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log_mse", "log10", "silog"):
        assert m[k] == pytest.approx(0.0, abs=1e-12)
    assert m["d1"] == m["d2"] == m["d3"] == 1.0


def test_prediction_twice_the_truth():
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])
    m = compute_metrics(2 * gt, gt, max_depth=10.0)
    assert m["abs_rel"] == pytest.approx(1.0)
    assert m["sq_rel"] == pytest.approx(np.mean(gt))  # (2g - g)^2 / g = g
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean(gt**2)))
    assert m["rmse_log"] == pytest.approx(math.log(2))
    assert m["log_mse"] == pytest.approx(math.log(2) ** 2)
    assert m["log10"] == pytest.approx(math.log10(2))
    assert m["silog"] == pytest.approx(0.0, abs=1e-4)  # a pure scale error is invisible to SILog
    assert m["d1"] == m["d2"] == m["d3"] == 0.0  # ratio 2 > 1.25^3 = 1.953


def test_hand_worked_case():
    """gt = (1, 2, 4), pred = (1, 1, 5); every value below was worked out on paper.

    abs: (0 + 1/2 + 1/4)/3;  sq: (0 + 1/2 + 1/4)/3;  rmse: sqrt(2/3);
    ln errors: 0, -ln 2, ln 1.25 -> mean square 0.176749, mean -0.156668;
    log10: (log10 2 + log10 1.25)/3;  ratios 1, 2, 1.25 -> d1 1/3 (1.25 is not < 1.25), d2 = d3 = 2/3.
    """
    m = compute_metrics(np.array([1.0, 1.0, 5.0]), np.array([1.0, 2.0, 4.0]), max_depth=10.0)
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["sq_rel"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(0.816497, rel=1e-5)
    assert m["log_mse"] == pytest.approx(0.176749, rel=1e-5)
    assert m["rmse_log"] == pytest.approx(0.420415, rel=1e-5)
    assert m["log10"] == pytest.approx(0.132647, rel=1e-5)
    assert m["silog"] == pytest.approx(39.0133, rel=1e-4)
    assert (m["d1"], m["d2"], m["d3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_valid_range_and_torch_inputs():
    gt = np.array([0.0, 0.0005, 1.0, 10.0, 12.0])
    pred = np.array([5.0, 5.0, 2.0, 5.0, 5.0])
    inclusive = compute_metrics(torch.tensor(pred), torch.tensor(gt), max_depth=10.0)
    # valid: gt = 1 and gt = 10 -> abs_rel = (1 + 0.5) / 2
    assert inclusive["abs_rel"] == pytest.approx(0.75)
    strict = compute_metrics(pred, gt, max_depth=10.0, max_inclusive=False)
    assert strict["abs_rel"] == pytest.approx(1.0)
    assert valid_mask(gt, max_depth=10.0).sum() == 2


def test_median_scaling_removes_scale():
    gt = np.array([1.0, 2.0, 4.0])
    assert compute_metrics(3 * gt, gt, median_scaling=True)["abs_rel"] == pytest.approx(0.0)


def test_crops_keep_the_expected_pixel_counts():
    assert crop_mask("eigen_nyu", (480, 640)).sum() == 426 * 560
    assert crop_mask("depthclip_nyu", (480, 640)).sum() == 426 * 555
    # Garg fractions on the 352 x 1216 KB crop: rows 143:349, cols 43:1172
    assert crop_mask("garg_kitti", (352, 1216)).sum() == 206 * 1129
    assert crop_mask("none", (3, 5)).sum() == 15
    assert crop_mask("eigen_nyu", (240, 320)).sum() == 213 * 280  # scaled window for demo frames
    with pytest.raises(ValueError, match="valid: none, eigen_nyu"):
        crop_mask("eigen", (480, 640))


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="differ .*; upsample first"):
        compute_metrics(np.ones((2, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="no valid ground-truth pixel"):
        compute_metrics(np.ones((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="clamp first"):
        compute_metrics(np.array([0.0, 1.0]), np.array([1.0, 1.0]))


def test_image_wise_average():
    a = {"abs_rel": 0.1, "d1": 1.0}
    b = {"abs_rel": 0.3, "d1": 0.0}
    assert average_metrics([a, b]) == {"abs_rel": pytest.approx(0.2), "d1": 0.5}
