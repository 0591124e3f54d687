"""Which code computed a number: a fingerprint of the computing modules, and the git state.

Why: a finished run is found again by its key. If that key covered only the method and the data, a
fix to the metric, evaluation or training code would silently reuse numbers computed before the fix.
The fingerprint hashes the source of every package module the trainer reaches through its imports
(training, evaluation, metrics, models, data readers) and nothing of the report or notebook layers,
so editing a figure never invalidates a run while editing ``metrics.py`` always does.

The module set is found by walking the package's import statements (module level and function
level) from :data:`COMPUTING_ROOTS`, so a new computing module joins the fingerprint by being imported.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["COMPUTING_ROOTS", "code_fingerprint", "computing_modules", "git_state"]

PACKAGE = "clipdepth"
PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: Modules whose import closure computes numbers: training (which reaches the models, data, losses,
#: evaluation and metrics) and the row-group scheduler that runs it.
COMPUTING_ROOTS: tuple[str, ...] = ("clipdepth.train.trainer", "clipdepth.train.lockstep")

#: Reached through imports but computing nothing: the published numbers (the registry's ``describe``
#: prints them), so correcting a transcribed figure does not invalidate finished runs.
NOT_COMPUTING: frozenset[str] = frozenset({"clipdepth.study.reference"})


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Package modules imported anywhere in ``path`` (absolute and relative, any nesting level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # "from . import x" names modules too
    return found


def computing_modules(root: Path = PACKAGE_DIR, roots: tuple[str, ...] = COMPUTING_ROOTS) -> dict[str, Path]:
    """Every package module reachable from ``roots`` through imports, with its file."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_COMPUTING:
            continue
        path = _module_file(name, root)
        if path is None:
            continue  # an imported name that is not a module (a function or class)
        seen[name] = path
        parents = name.split(".")
        for i in range(2, len(parents)):
            todo.append(".".join(parents[:i]))  # importing a.b.c runs a.b/__init__ too
        todo.extend(_imports(path, name) - set(seen))
    return dict(sorted(seen.items()))


@functools.cache
def _cached_fingerprint(root: str) -> str:
    digest = hashlib.sha256()
    base = Path(root)
    for name, path in computing_modules(base).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_fingerprint(root: str | Path = PACKAGE_DIR) -> str:
    """SHA-256 over the sources of :func:`computing_modules` (computed once per process)."""
    return _cached_fingerprint(str(Path(root).resolve()))


def git_state(root: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding the package (None values outside git)."""
    root = Path(root) if root is not None else PACKAGE_DIR

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}
