"""The package's shape: its layers, no import cycle (function-level imports included), no long module
without a reason, a tree that shows its jobs.

Why a test: a cycle hidden behind a function-level import is the usual symptom of a module doing two
jobs, and a 1,000-line module is where a newcomer gets lost (issue 12). The layers (model, data, eval
and study never import train, run or report; run above report above the baselines above train) are
``import-linter`` contracts in ``pyproject.toml``, checked here with ``lint-imports``; what import-linter
cannot say (a module-level cycle across subpackages, the notebooks' facade) is read from the source with
:mod:`ast` (nothing is imported), so imports inside functions count too. Each check is first shown to
fail on a small package written for the purpose.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lib" / "clipdepth"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: A module over this many lines must say why in its docstring, with this marker phrase.
MAX_LINES = 500
LONG_MARKER = "Long because:"

#: Modules that only gather names for notebooks; nothing inside the package may import them.
FACADES = ("clipdepth.report",)


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(name: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> set[str]:
    """Package modules that executing ``node`` inside module ``name`` may import (submodules included)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = name.split(".")
            if not mods[name].name == "__init__.py":
                here = here[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join(here + ([base] if base else []))
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        parts = target.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first, then a.b.c
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in mods:
                found.add(candidate)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere in its source (top level, functions, methods).

    A module's own ancestors are left out: they are already being initialised when it runs.
    """
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(name, node, mods)
        graph[name] = {t for t in edges if t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_modules(root: Path, max_lines: int = MAX_LINES, marker: str = LONG_MARKER) -> dict[str, int]:
    """Modules over ``max_lines`` lines whose docstring does not contain ``marker``: name -> lines."""
    out = {}
    for name, path in modules(root).items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines > max_lines and marker not in (ast.get_docstring(ast.parse(text)) or ""):
            out[name] = lines
    return out


def _write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "toypkg"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


# --- the checks fail where they should ---------------------------------------------------------


def test_cycle_through_a_function_level_import_is_found(tmp_path) -> None:
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from .high import g  # dodges the cycle at import time\n    return g\n",
        "high.py": "from . import low\n\ndef g():\n    return low\n",
        "other.py": "import toypkg.low\n",
    })
    graph = import_graph(pkg)
    assert graph["toypkg.low"] == {"toypkg.high"} and graph["toypkg.high"] == {"toypkg.low"}
    assert graph["toypkg.other"] == {"toypkg.low"}  # the root package is an ancestor: not an edge
    assert cycles(graph) == [["toypkg.high", "toypkg.low"]]


def test_cycle_through_a_subpackage_init_is_found(tmp_path) -> None:
    # a.py imports sub.leaf, which runs sub/__init__, which imports a: a cycle although leaf imports nothing
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .sub.leaf import x\n",
        "sub/__init__.py": "from .. import a\n",
        "sub/leaf.py": "x = 1\n",
    })
    assert cycles(import_graph(pkg)) == [["toypkg.a", "toypkg.sub"]]


def test_long_module_needs_a_stated_reason(tmp_path) -> None:
    body = "x = 1\n" * 20
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "short.py": '"""Short."""\n' + "x = 1\n",
        "silent.py": '"""No reason given."""\n' + body,
        "reasoned.py": f'"""Big.\n\n{LONG_MARKER} it must be.\n"""\n' + body,
    })
    assert long_modules(pkg, max_lines=10) == {"toypkg.silent": 21}


# --- the package ---------------------------------------------------------------------------------


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles (function-level imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_long_module_without_a_reason() -> None:
    found = long_modules(PACKAGE)
    assert not found, (f"modules over {MAX_LINES} lines without '{LONG_MARKER}' in their docstring: "
                       + ", ".join(f"{n} ({k})" for n, k in sorted(found.items())))


def facade_importers(root: Path, facade: str) -> list[str]:
    """Modules that import names from the facade package itself (``from clipdepth.report import X`` with
    X not a submodule, ``from clipdepth import report``, ``import clipdepth.report``); importing one of
    its submodules (``clipdepth.report.session``) is how the package should do it."""
    mods = modules(root)
    parent, _, leaf = facade.rpartition(".")
    found = set()
    for name, path in mods.items():
        if name == facade or name.startswith(facade + "."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == facade for a in node.names):
                found.add(name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                if node.module == facade and any(f"{facade}.{a.name}" not in mods for a in node.names):
                    found.add(name)
                if node.module == parent and any(a.name == leaf for a in node.names):
                    found.add(name)
    return sorted(found)


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath)})


def test_layer_contracts_fail_on_a_forbidden_import(tmp_path) -> None:
    """A copy of the package where a model module imports the trainer breaks the first contract."""
    shutil.copytree(PACKAGE, tmp_path / "lib" / "clipdepth", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    bins = tmp_path / "lib" / "clipdepth" / "model" / "bins.py"
    late_import = "\n\ndef _trainer():\n    from clipdepth.train import trainer\n\n    return trainer\n"
    bins.write_text(bins.read_text() + late_import)  # a function-level import counts too
    out = lint_imports(tmp_path, tmp_path / "lib")
    assert out.returncode == 1, out.stdout
    assert "clipdepth.model.bins -> clipdepth.train.trainer" in out.stdout


def test_the_layer_contracts_hold() -> None:
    out = lint_imports(REPO, REPO / "lib")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_the_package_lists_its_jobs_at_the_top() -> None:
    """At most ten entries under lib/clipdepth besides __init__/__main__: subpackages by job, the
    vocabulary and the plumbing (underscored)."""
    entries = sorted(p.name for p in PACKAGE.iterdir()
                     if p.name not in ("__init__.py", "__main__.py", "__pycache__", "py.typed"))
    assert len(entries) <= 10, entries
    assert not [e for e in entries if e.endswith(".py") and not e.startswith("_") and e != "vocab.py"], entries


def test_facade_import_is_found(tmp_path) -> None:
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "face/__init__.py": "from .inner import x\n",
        "face/inner.py": "x = 1\n",
        "good.py": "from toypkg.face.inner import x\nfrom toypkg.face import inner\n",
        "bad.py": "from toypkg.face import x\n",
        "worse.py": "from toypkg import face\n",
    })
    assert facade_importers(pkg, "toypkg.face") == ["toypkg.bad", "toypkg.worse"]


@pytest.mark.parametrize("facade", FACADES)
def test_nothing_in_the_package_imports_a_facade(facade: str) -> None:
    importers = facade_importers(PACKAGE, facade)
    assert not importers, f"{facade} only gathers names for notebooks; import the module it re-exports: {importers}"
