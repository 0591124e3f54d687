"""``./run_all.sh`` checks every ``-p`` value against its declared type before anything runs (exit 2,
one line), resolves relative paths once from the caller's directory, and its declarations match the
notebooks' ``parameters`` cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipdepth.run import params
from clipdepth.run import run_all as runall

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "run_all.sh"


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    full = {**os.environ, "CLIPDEPTH_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([str(RUN_ALL), *args], capture_output=True, text=True, env=full, timeout=timeout,
                          cwd=str(cwd))


def test_declarations_match_the_notebooks_parameters_cells() -> None:
    notebooks = runall.discover_notebooks(REPO / "notebooks")
    assert len(notebooks) >= 5
    used = {}
    for nb in notebooks:
        for name, default in runall.notebook_parameters(nb).items():
            used.setdefault(name, default)
            assert name in params.PARAMETERS, f"{nb.name}: parameter {name!r} undeclared in clipdepth.run.params"
            params.check_parameter(name, default, REPO)  # every default is itself allowed
    assert set(params.PARAMETERS) - set(used) == set(params.FUTURE), "declared but in no notebook"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["-p", "epochs", "abc"], {},
         "run_all: error: parameter 'epochs': 'abc' is not allowed; allowed: an integer >= 1, or None\n"),
        (["-p", "datasets", '["nyu","mars"]'], {},
         "run_all: error: parameter 'datasets': ['nyu', 'mars'] is not allowed (unknown 'mars'); allowed: a "
         "non-empty list of nyu, kitti (e.g. ['nyu', 'kitti'] or nyu,kitti)\n"),
        (["-p", "device", "cuda"], {"CUDA_VISIBLE_DEVICES": ""},
         "run_all: error: parameter 'device': 'cuda' is not allowed (no CUDA device is available on this "
         "machine); allowed: cpu | auto | cuda | cuda:N (cuda only where a CUDA device is available)\n"),
        (["-p", "train_mode", "fast"], {},
         "run_all: error: parameter 'train_mode': 'fast' is not allowed; allowed: faithful | cached\n"),
    ],
)
def test_bad_values_stop_before_anything_runs(tmp_path: Path, args: list[str], env: dict, message: str) -> None:
    proc = _run([*args, "--reports-dir", "reports"], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == message
    assert proc.stdout == ""
    assert not (tmp_path / "reports").exists()


def test_missing_weights_file_is_named_with_its_absolute_path(tmp_path: Path) -> None:
    proc = _run(["-p", "weights", "w.pt", "--reports-dir", "reports"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"run_all: error: parameter 'weights': 'w.pt' is not allowed (file {tmp_path / 'w.pt'} "
                           "does not exist); allowed: None, \"openai\" (or another open_clip pretrained tag), or "
                           "an existing checkpoint file\n")


def test_check_parameter_normalises_values() -> None:
    base = Path("/somewhere")
    assert params.check_parameter("datasets", "nyu", base) == ["nyu"]
    assert params.check_parameter("datasets", "kitti,nyu,kitti", base) == ["kitti", "nyu"]
    assert params.check_parameter("seeds", "42,43", base) == [42, 43]
    assert params.check_parameter("epochs", None, base) is None
    assert params.check_parameter("clip2depth_lr", 1, base) == 1.0
    assert params.check_parameter("data_dir", "../d", base) == "/d"
    assert params.check_parameter("runs_dir", "~/runs", base) == str(Path("~/runs").expanduser())
    assert params.check_parameter("weights", "openai", base) == "openai"
    for name, value in [("epochs", -1), ("epochs", 2.5), ("epochs", True), ("seed", None), ("force", 1),
                        ("llm_mde_image_size", 100), ("precision", "fp16"), ("subset", 0), ("seeds", []),
                        ("device", "gpu"), ("weights", "no-such-tag")]:
        with pytest.raises(params.ParameterError, match=rf"^parameter '{name}': "):
            params.check_parameter(name, value, base)
    assert params.check_parameter("message", 3, base) == 3  # undeclared: left to the notebook-default check


def _notebook(path: Path, params_src: str, body: str) -> None:
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
         "source": params_src},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": body},
    ]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 4,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    path.write_text(json.dumps(nb))


def _tiny_rn50_checkpoint(path: Path) -> None:
    """A state dict with every key and shape of RN50-quickgelu, each tensor one stored number expanded to
    its shape: a valid checkpoint for the up-front check, a few hundred kB on disk."""
    import open_clip
    import torch

    model = open_clip.create_model("RN50-quickgelu", pretrained=None, device="meta")
    torch.save({k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}, path)


def test_relative_paths_are_taken_from_the_callers_directory(tmp_path: Path) -> None:
    """``-p weights w.pt`` from a directory that is not the repository: checked there, and the kernel
    (running in the notebooks folder) gets the same file as an absolute path."""
    caller = tmp_path / "caller"
    (caller / "nbs").mkdir(parents=True)
    _tiny_rn50_checkpoint(caller / "w.pt")  # checked as a checkpoint before anything runs (issue 23)
    _notebook(caller / "nbs" / "01_paths.ipynb",
              'profile = "demo"\nreports_dir = "reports"\nweights = None\ndata_dir = "data"',
              "from pathlib import Path\nprint('WEIGHTS', weights, Path(weights).stat().st_size)\n"
              "print('DATA', data_dir)")
    proc = _run(["--notebooks-dir", "nbs", "--reports-dir", "out", "-p", "weights", "w.pt",
                 "-p", "data_dir", "../data"], cwd=caller)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = caller / "out" / "demo"
    run = json.loads((out / "run_all.json").read_text())
    passed = run["notebooks"]["01_paths"]["parameters"]
    assert passed["weights"] == str(caller / "w.pt") and passed["data_dir"] == str(tmp_path / "data")
    executed = json.loads((out / "01_paths.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert f"WEIGHTS {caller / 'w.pt'} {(caller / 'w.pt').stat().st_size}" in printed
    assert f"DATA {tmp_path / 'data'}" in printed
