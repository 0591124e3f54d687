"""The GPU path: a lockstep step on CUDA gives the CPU's numbers (fp32), and bf16 autocast runs.

Why: the paper profile runs on a GPU, where cuDNN kernels and TF32 could move a number without any test
noticing. These tests need CUDA; they are marked ``cuda`` and skipped, and counted as skipped, on a
machine without it (``pytest -m cuda`` selects them on a GPU machine, ``benchmarks/gpu_check.sh``
times the same path at the paper's sizes).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch

from clipdepth.report.provenance import resolve_device
from clipdepth.train.lockstep import RunOptions, run_units
from clipdepth.train.trainer import resolve_row

_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def needs_cuda(test):
    """Mark a test ``cuda`` and skip it where torch sees no CUDA device."""
    return pytest.mark.cuda(_no_cuda(test))

GROUP = ("t3/nyu/learned-7", "t4/nyu/4o4d", "t6/nyu/learned-20-log")
METRICS = ("abs_rel", "rmse", "silog", "d1")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "cuda-data"))


def _run(tmp_path, rn50, device: str, precision: str = "fp32") -> dict:
    runs = tmp_path / device.replace(":", "") / precision
    options = RunOptions(runs_dir=str(runs), cache_dir=str(tmp_path / "cache"), device=device,
                         precision=precision, n_train=16, n_test=2, keep_examples=0)
    rows = [resolve_row(name, "demo", mode="faithful", epochs=1) for name in GROUP]
    model = copy.deepcopy(rn50)  # the session's model stays on the CPU for the other tests
    return dict(zip(GROUP, run_units(rows, options, clip_provider=lambda arch, weights: model), strict=True))


@needs_cuda
def test_lockstep_step_on_cuda_equals_cpu_in_fp32(tmp_path, rn50) -> None:
    """One lockstep step (batch 16) of three rows, then evaluation: CUDA within 1e-3 relative of the CPU."""
    cpu, cuda = _run(tmp_path, rn50, "cpu"), _run(tmp_path, rn50, "cuda")
    for name in GROUP:
        assert cuda[name].protocol["precision"] == "fp32"
        for metric in METRICS:
            a, b = cpu[name].metrics[metric], cuda[name].metrics[metric]
            assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-5), (name, metric, a, b)


@needs_cuda
def test_bf16_autocast_runs_and_is_recorded(tmp_path, rn50) -> None:
    results = _run(tmp_path, rn50, "cuda", precision="bf16")
    for name in GROUP:
        assert results[name].protocol["precision"] == "bf16"
        assert all(math.isfinite(results[name].metrics[m]) for m in METRICS)


@needs_cuda
def test_auto_picks_cuda_when_visible() -> None:
    assert resolve_device("auto") == "cuda"


def test_auto_is_the_cpu_without_cuda_and_bench_refuses_cuda() -> None:
    """Runs everywhere: without CUDA, "auto" means the CPU and ``bench --device cuda`` is a one-line error."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    proc = subprocess.run([sys.executable, "-m", "clipdepth", "bench", "--device", "cuda", "--parts", "lockstep"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == ("error: --device cuda: CUDA is not available on this machine; use --device cpu or auto\n")
