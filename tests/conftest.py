"""Shared fixtures: random-init CLIP models of the real architectures, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("MPLBACKEND", "Agg")
if "CLIPDEPTH_CACHE_DIR" not in os.environ:  # weights-id cache: never the user's home folder in tests
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
