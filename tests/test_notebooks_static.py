"""Notebooks as committed: one literal-only ``parameters`` cell first, demo defaults, no outputs, no model code.

Why static checks next to nbval: nbval only proves a notebook runs with its defaults. Whether
papermill can parameterise it (exactly one tagged cell, literals only, names papermill can parse),
whether it is committed clean, and whether it stays a thin layer over ``clipdepth`` need these tests.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import papermill
import pytest

from clipdepth.report._notebooks import notebook_tables
from clipdepth.run.run_all import (
    NotebookParameterError,
    discover_notebooks,
    notebook_parameters,
    parameters_cell,
)

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = discover_notebooks(NOTEBOOKS_DIR)
IDS = [p.stem for p in NOTEBOOKS]

#: Every table notebook must accept these (run_all and the README rely on them).
REQUIRED_PARAMETERS = {"profile", "data_dir", "device", "epochs", "reports_dir"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_after_parameters(nb: dict) -> str:
    index, _ = parameters_cell(nb)
    return "\n".join("".join(c["source"]) for c in nb["cells"][index + 1 :] if c["cell_type"] == "code")


def test_table_notebooks_exist_in_reading_order() -> None:
    assert IDS[:3] == ["01_token_ablation", "02_context_tokens", "03_bins"]
    assert IDS == sorted(IDS)
    assert len({i[:2] for i in IDS}) == len(IDS), "two notebooks share a number"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_declared_tables_are_the_tables_the_notebook_runs(path: Path) -> None:
    """run_all plans a notebook's row groups from its metadata (``clipdepth.tables``) before running it, so
    the tables it declares must be exactly those whose rows its code asks for (``ctx.experiment_names``)."""
    asked = re.findall(r"experiment_names\(\s*[\"'](t\d)[\"']", _code_after_parameters(_load(path)))
    assert sorted(set(asked)) == sorted(notebook_tables(path))
    if path.stem in ("01_token_ablation", "02_context_tokens", "03_bins"):
        assert notebook_tables(path), "a table notebook of Tables 3-7 must declare its tables"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exactly_one_parameters_cell_first_with_literals(path: Path) -> None:
    nb = _load(path)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first_code is tagged[0]
    params = notebook_parameters(path)  # raises on anything but `name = literal`
    for node in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign))
    assert REQUIRED_PARAMETERS <= set(params)
    assert {"seed", "seeds"} & set(params), "a notebook that trains names its seed(s)"
    assert params["profile"] == "demo", "defaults must be the fast offline demo profile"
    # the CLIP weights: one `weights` (None = the profile's), or per backbone in 06's `backbones` list
    assert ("weights" in params and params["weights"] is None) or all(
        tag is None for _, tag in params.get("backbones", [(None, "missing")])), "demo defaults load no weights"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_papermill_sees_the_same_parameters(path: Path) -> None:
    """papermill parses the cell with a regex; a comment with '=' or a multi-line value can hide a name."""
    seen = papermill.inspect_notebook(str(path))
    assert set(seen) == set(notebook_parameters(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path: Path) -> None:
    nb = _load(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"stored outputs in {path.name}"
            assert cell.get("execution_count") is None, f"stored execution count in {path.name}"
        assert "papermill" not in cell.get("metadata", {})
        assert "injected-parameters" not in cell.get("metadata", {}).get("tags", [])
    assert "papermill" not in nb["metadata"]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_parameter_is_used(path: Path) -> None:
    """A parameter nobody reads would be silently ignored when overridden with -p."""
    code = _code_after_parameters(_load(path))
    for name in notebook_parameters(path):
        assert re.search(rf"\b{re.escape(name)}\b", code), f"parameter {name!r} is never used in {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_model_code_in_notebooks(path: Path) -> None:
    code = _code_after_parameters(_load(path))
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                assert module.split(".")[0] not in {"torch", "open_clip", "timm", "transformers"}, (
                    f"{path.name} imports {module}: model code belongs in clipdepth")
        assert not isinstance(node, ast.ClassDef), f"{path.name} defines a class: move it into clipdepth"


def _notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _code(source: str, tags: list[str] | None = None) -> dict:
    return {"cell_type": "code", "source": source, "metadata": {"tags": tags or []}, "outputs": [],
            "execution_count": None}


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([_code("a = 1")], "found 0"),
        ([_code("a = 1", ["parameters"]), _code("b = 2", ["parameters"])], "found 2"),
        ([_code("import os"), _code("a = 1", ["parameters"])], "first code cell"),
        ([_code("a = 1\nb = a * 2", ["parameters"])], "'b' is not a literal"),
        ([_code("import os", ["parameters"])], "not a `name = literal`"),
        ([_code("a, b = 1, 2", ["parameters"])], "not a `name = literal`"),
    ],
)
def test_parameter_checks_reject_bad_notebooks(tmp_path: Path, cells: list[dict], message: str) -> None:
    path = tmp_path / "00_bad.ipynb"
    path.write_text(json.dumps(_notebook(cells)))
    with pytest.raises(NotebookParameterError, match=re.escape(message)):
        notebook_parameters(path)


def test_parameter_checks_accept_annotations(tmp_path: Path) -> None:
    path = tmp_path / "00_ok.ipynb"
    path.write_text(json.dumps(_notebook([_code('profile: str = "demo"\nn = [1, 2]\nw = None', ["parameters"])])))
    assert notebook_parameters(path) == {"profile": "demo", "n": [1, 2], "w": None}
