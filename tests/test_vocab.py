"""The vocabulary module: torch-free, defined once, and one rule for "is this weights value a file?"."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from clipdepth import vocab
from clipdepth.vocab import TEMPLATE_CONTEXT_TOKENS, cache_dir, is_weights_file

LIB = Path(vocab.__file__).resolve().parent


def test_importing_vocab_does_not_import_torch() -> None:
    code = ("import sys, clipdepth.vocab; heavy = [m for m in ('torch', 'open_clip', 'numpy', 'pandas') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_context_tokens_are_counted_from_the_templates() -> None:
    # by hand: "{ctx} {object} {ctx} {depth}" has two, 4o4d four before and four after "object"
    assert TEMPLATE_CONTEXT_TOKENS == {"baseline": 0, "depthclip": 0, "1o1d": 2, "1o2d": 3, "4o4d": 8}


def test_each_word_is_defined_once() -> None:
    """No module outside vocab assigns a vocabulary name (a re-export by import is fine) or spells out
    one of its lists (``("nyu", "kitti")``, the bin kinds, the architectures, the template names)."""
    lists = {vocab.DATASETS, vocab.BIN_KINDS, vocab.ARCHS, tuple(vocab.TEMPLATES), tuple(vocab.WORD_LISTS)}
    names = (set(vocab.__all__) - {"cache_dir"}) | {"SUPPORTED_ARCHS", "looks_like_file"}  # cache_dir: a common local
    found = []
    for path in LIB.rglob("*.py"):
        if path.name == "vocab.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (node.targets if isinstance(node, ast.Assign) else [node.target]
                       if isinstance(node, ast.AnnAssign) else [])
            found += [f"{path.name}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in names]
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                found.append(f"{path.name}: def {node.name}")
            if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts) \
                    and tuple(e.value for e in node.elts) in lists:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


@pytest.mark.parametrize(("value", "expected"), [
    ("openai", False),
    ("laion2b_s34b_b79k", False),
    ("RN50.pt", True),
    ("open_clip_model.safetensors", True),
    ("weights/RN50", True),
    ("~/RN50", True),
    ("./RN50", True),
])
def test_is_weights_file(value: str, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_weights_file(value) is expected


def test_an_existing_file_without_suffix_is_a_file_relative_to_base(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "openai").write_bytes(b"x")
    monkeypatch.chdir(tmp_path.parent)
    assert is_weights_file("openai", base=tmp_path)
    assert not is_weights_file("openai")


def test_one_cache_folder_and_the_old_name_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdepth.data.splits import cache_dir as splits_dir
    from clipdepth.model.checkpoints import weights_id_cache_path

    monkeypatch.setenv("CLIPDEPTH_CACHE_DIR", str(tmp_path / "new"))
    monkeypatch.setenv("CLIPDEPTH_CACHE", str(tmp_path / "old"))
    assert splits_dir() == tmp_path / "new" / "splits"
    assert weights_id_cache_path() == tmp_path / "new" / "weights_ids.json"
    monkeypatch.delenv("CLIPDEPTH_CACHE_DIR")
    with pytest.warns(FutureWarning, match=r"\$CLIPDEPTH_CACHE is deprecated: set \$CLIPDEPTH_CACHE_DIR"):
        assert cache_dir() == tmp_path / "old"
    monkeypatch.delenv("CLIPDEPTH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "clipdepth"
