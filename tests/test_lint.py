"""``ruff check lib tests benchmarks`` is clean (the project's lint settings in pyproject.toml, line length 120).

Why a test and not only a CI step: the suite is what every contributor runs, so a lint error shows up
where the change is made. Ruff is taken from the interpreter's environment (the venv); without it the
test is skipped and says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("lib", "tests", "benchmarks")


def _ruff() -> str | None:
    """The ruff next to this interpreter (the venv's), else one on PATH, else None."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file():
        return str(beside)
    return shutil.which("ruff")


def test_ruff_check_is_clean() -> None:
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed in this environment (pip install ruff); lint not checked")
    targets = [t for t in TARGETS if (ROOT / t).is_dir()]
    proc = subprocess.run([ruff, "check", *targets], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check {' '.join(targets)} found problems:\n{proc.stdout}{proc.stderr}"
