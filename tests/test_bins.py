"""Bin centres (issue 2, must-show 4)."""

from __future__ import annotations

import pytest
import torch

from clipdepth.model.bins import DEPTHCLIP_BINS, bin_centres


def test_nyu_even_7_matches_the_paper():
    c = bin_centres("even", 7, 0.001, 10.0)
    expected = [0.7152, 2.1436, 3.5721, 5.0005, 6.4289, 7.8574, 9.2858]
    assert torch.allclose(c, torch.tensor(expected, dtype=torch.float64), atol=5e-5)


def test_kitti_even_7_ends():
    c = bin_centres("even", 7, 0.001, 80.0)
    assert round(c[0].item(), 4) == 5.7152 and round(c[-1].item(), 4) == 74.2858


def test_log_bins_and_const80():
    nyu = bin_centres("log", 7, 0.001, 10.0)
    expected = [0.0019, 0.0072, 0.0268, 0.1, 0.3728, 1.3895, 5.1795]
    assert torch.allclose(nyu, torch.tensor(expected, dtype=torch.float64), atol=5e-5)  # notes round to 4 dp
    assert torch.equal(bin_centres("const80-log", 20, 0.001, 80.0), bin_centres("log", 20, 0.001, 80.0))
    assert bin_centres("const80-log", 7, 0.001, 10.0)[-1].item() == pytest.approx(35.7165, abs=1e-3)
    assert bin_centres("even", 20, 0.001, 10.0)[0].item() == pytest.approx(0.250975)


def test_depthclip_and_explicit_lists():
    assert bin_centres("depthclip", 7).tolist() == list(DEPTHCLIP_BINS)
    assert bin_centres([1, 2, 3], 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="3 entries but n=4"):
        bin_centres([1, 2, 3], 4)
    with pytest.raises(ValueError, match="valid: even, log, const80-log, depthclip"):
        bin_centres("linear", 7)
