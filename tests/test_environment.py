"""The conda environment file and pyproject.toml must declare the same dependencies."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env_pip_list() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    deps = []
    for line in lines[start + 1 :]:
        item = line.strip()
        if not item.startswith("- "):
            break
        deps.append(item[2:].strip())
    return [d for d in deps if d != "-e ."]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _env_pip_list() == project["dependencies"]
    python = [line.strip() for line in (ROOT / "environment.yml").read_text().splitlines()
              if line.strip().startswith("- python=")]
    assert python == ["- python=3.11"]
    assert project["requires-python"] == ">=3.11"
