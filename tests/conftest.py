"""Shared fixtures: random-init CLIP models of the real architectures, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("MPLBACKEND", "Agg")
if "CLIPDEPTH_CACHE_DIR" not in os.environ:  # split lists and weights ids: never the user's home in tests
    import tempfile

    os.environ["CLIPDEPTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="clipdepth-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

from clipdepth.model.backbone import load_clip  # noqa: E402


@pytest.fixture(scope="session")
def rn50():
    return load_clip("RN50-quickgelu", weights=None, seed=0)


@pytest.fixture(scope="session")
def vit_b32():
    return load_clip("ViT-B-32-quickgelu", weights=None, seed=0)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo_reports(tmp_path_factory):
    """``./run_all.sh`` run once per test session (demo profile, all six notebooks, default parameters)
    into a temporary reports root; returns its ``demo`` folder (index.html, <notebook>.html, results).

    Finished runs and cached features go where the notebooks' defaults put them (``cache/`` of this
    checkout), so later tests and sessions reuse them. A failed run fails every test that uses it,
    with the end of run_all's output.
    """
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    reports = tmp_path_factory.mktemp("demo-reports")
    lib = str(repo / "lib")
    env = {**os.environ, "CLIPDEPTH_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(p for p in (lib, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([str(repo / "run_all.sh"), "--reports-dir", str(reports)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"./run_all.sh (demo) exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return reports / "demo"
