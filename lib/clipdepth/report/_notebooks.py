"""Which notebook regenerates which paper table, read from the notebooks themselves.

Why a module of its own, and a light one (json and paths only): ``./run_all.sh`` plans the row groups
of every table notebook before running any, and the pages link a row to the notebook of its own
table, so both read the tables a notebook declares in its metadata (``"clipdepth": {"tables":
["t3"]}``). Nothing in the library names a notebook; a new table notebook declares its tables.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from clipdepth._files import repo_root

__all__ = ["home_notebook", "notebook_tables"]


def notebook_tables(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The registry tables a notebook regenerates, from its metadata (``"clipdepth": {"tables": [...]}``).

    The notebooks declare their tables so that nothing in the library names a notebook: ``./run_all.sh``
    plans their row groups from it, and the pages link a row to the notebook of its own table."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(nb.get("metadata", {}).get("clipdepth", {}).get("tables", ()))


@functools.cache
def _table_homes(notebooks_dir: str) -> dict[str, str]:
    homes: dict[str, str] = {}
    for path in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb")):
        for table in notebook_tables(path):
            homes.setdefault(table, path.stem)
    return homes


def home_notebook(table: str | None, notebooks_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The notebook that declares a paper table (Table 3 -> ``01_token_ablation``); None for tables no
    table notebook declares (DepthCLIP, the baselines), which live where they are shown."""
    return _table_homes(str(notebooks_dir or repo_root() / "notebooks")).get(str(table))
