"""Bit-for-bit comparison of nested training states (tokens, optimiser and scheduler states, BN
statistics, histories), shared by the tests that claim two runs are the same computation."""

from __future__ import annotations

import torch


def assert_states_equal(a, b, path: str = "") -> None:
    """``a`` equals ``b`` exactly: tensors by ``torch.equal``, containers element by element (the failing
    path is the assertion message), everything else by ``==``."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_states_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path
