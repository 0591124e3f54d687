"""``./run_all.sh``: argument checks before anything runs, the paper profile's prerequisite check,
failure handling, and one real demo notebook end to end into a temporary reports folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from clipdepth.eval.metrics import METRIC_NAMES
from clipdepth.run import params
from clipdepth.run import run_all as runall
from clipdepth.study import experiments
from clipdepth.study.reference import reference_for
from clipdepth.train import plan

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "run_all.sh"


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "CLIPDEPTH_PYTHON": sys.executable, **(env or {})}
    return subprocess.run([str(RUN_ALL), *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=str(REPO))


# -- pure helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("0.5", 0.5), ("true", True), ("False", False), ("None", None), ("null", None),
     ('["nyu"]', ["nyu"]), ("nyu", "nyu"), ("/data/x", "/data/x"), ("cuda", "cuda")],
)
def test_parse_value(text: str, value) -> None:
    assert runall.parse_value(text) == value


def test_undeclared_parameters_are_checked_against_their_notebook_default() -> None:
    defaults = {"sets": ["nyu"], "n": None, "lr": 0.5, "mode": "cpu", "k": 42, "flag": False}

    def check(name: str, value):
        return params.check_parameter(name, value, "/tmp", defaults)

    assert (check("sets", "nyu,kitti"), check("n", 2), check("lr", 1), check("mode", "x")) == (
        ["nyu", "kitti"], 2, 1.0, "x")
    assert check("not_a_parameter", "abc") == "abc"
    with pytest.raises(params.ParameterError, match=r"^parameter 'k': 'abc' is not allowed; allowed: a int value like "
                       r"its default 42$"):
        check("k", "abc")
    with pytest.raises(params.ParameterError, match=r"allowed: true or false$"):
        check("flag", 1)
    with pytest.raises(params.ParameterError, match="'k': True is not allowed"):
        check("k", True)


def test_select_notebooks_by_name_prefix_or_part() -> None:
    nbs = [Path("01_token_ablation.ipynb"), Path("02_context_tokens.ipynb"), Path("03_bins.ipynb")]
    assert runall._select(nbs, []) == nbs
    assert runall._select(nbs, ["03,01"]) == [nbs[0], nbs[2]]  # reading order kept
    assert runall._select(nbs, ["context_tokens"]) == [nbs[1]]
    assert runall._select(nbs, ["01_token_ablation.ipynb"]) == [nbs[0]]
    with pytest.raises(ValueError, match="no notebook matches 'tabel9'"):
        runall._select(nbs, ["tabel9"])


# -- failing fast ----------------------------------------------------------------------------------


def test_misspelt_parameter_fails_before_running_anything(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = _run(["-p", "epochs_overide", "1", "--reports-dir", str(tmp_path)])
    assert proc.returncode == 2
    assert "unknown parameter 'epochs_overide'" in proc.stderr
    assert "did you mean epochs" in proc.stderr
    valid = proc.stderr.split("Valid parameter names:")[1]
    for name in ("datasets", "epochs", "profile", "weights", "seed"):
        assert name in valid
    assert not any(tmp_path.iterdir()), "nothing may run or be written"
    assert time.perf_counter() - t0 < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "profile", "paper"], "use --profile"),
        (["-p", "seed", "abc"], "parameter 'seed': 'abc' is not allowed; allowed: an integer >= 0"),
        (["--only", "99_nothing"], "no notebook matches '99_nothing'"),
        (["--profile", "full"], "unknown profile 'full'"),
    ],
)
def test_bad_arguments_fail_before_running(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _run([*args, "--reports-dir", str(tmp_path)])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not any(tmp_path.iterdir())


def test_paper_profile_without_data_stops_fast_listing_what_is_missing(tmp_path: Path) -> None:
    home = tmp_path / "home"  # empty caches: no split lists, no open_clip weights
    home.mkdir()
    env = {"HOME": str(home), "HF_HOME": str(home / "hf"), "CLIPDEPTH_CACHE_DIR": str(home / "clipdepth"),
           "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = _run(["--profile", "paper", "-p", "data_dir", str(tmp_path / "nodata"),
                 "--reports-dir", str(tmp_path / "reports")], env=env)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 3, proc.stdout + proc.stderr
    err = proc.stderr
    assert "missing prerequisites" in err
    assert f"nyu data root: {tmp_path / 'nodata' / 'nyu'} does not exist" in err
    assert f"kitti data root: {tmp_path / 'nodata' / 'kitti' / 'raw'} does not exist" in err
    assert "kitti annotated depth root" in err
    assert "nyudepthv2_test_files_with_gt.txt" in err and "eigen_test_files_with_gt.txt" in err
    assert "weights 'openai' are not in open_clip's cache" in err
    assert err.count("how to get it:") >= 5
    assert "Nothing was run" in err
    assert not (tmp_path / "reports").exists()
    assert seconds < 60, f"the prerequisite check took {seconds:.0f} s"


def test_paper_prerequisites_accept_a_complete_synthetic_layout(tmp_path: Path) -> None:
    """The checker must not cry wolf: real layouts (here synthetic scenes written in them) pass."""
    from clipdepth.data.synthetic import ensure_synthetic_dataset

    ensure_synthetic_dataset("indoor", tmp_path / "nyu", 2, 2, seed=0, size=(64, 96))
    weights = tmp_path / "rn50.pt"
    weights.write_bytes(b"not really weights")
    missing = runall.check_paper_prerequisites(["nyu"], tmp_path, str(weights))
    assert missing == []
    missing = runall.check_paper_prerequisites(["nyu"], tmp_path, str(tmp_path / "absent.pt"))
    assert [m.what for m in missing] == [f"CLIP weights file {tmp_path / 'absent.pt'} does not exist"]


# -- failures do not stop the others ----------------------------------------------------------------


def _tiny_notebook(path: Path, body: str) -> None:
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
         "source": 'profile = "demo"\nreports_dir = "reports"\nmessage = "hello"'},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": body},
    ]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 4,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    path.write_text(json.dumps(nb))


def test_a_failing_notebook_does_not_stop_the_others(tmp_path: Path) -> None:
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _tiny_notebook(nbdir / "01_fails.ipynb", 'raise RuntimeError("deliberate failure")')
    _tiny_notebook(nbdir / "02_works.ipynb", "print(message, profile)")
    proc = _run(["--notebooks-dir", str(nbdir), "--reports-dir", str(tmp_path / "reports"), "--jobs", "2",
                 "-p", "message", "overridden"], timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 notebook(s) failed" in proc.stderr and "01_fails" in proc.stderr
    assert "deliberate failure" in proc.stderr
    out = tmp_path / "reports" / "demo"
    assert (out / "02_works.html").is_file() and (out / "01_fails.html").is_file()
    executed = json.loads((out / "02_works.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "overridden demo" in printed
    run = json.loads((out / "run_all.json").read_text())
    assert run["notebooks"]["01_fails"]["status"] == "failed" and run["notebooks"]["02_works"]["status"] == "ok"
    index = (out / "index.html").read_text()
    assert "FAILED" in index and 'href="02_works.html"' in index
    assert "print(message" not in (out / "02_works.html").read_text(), "HTML pages are rendered without code"


# -- one real notebook, end to end ---------------------------------------------------------------------


def test_run_all_demo_end_to_end(demo_reports: Path) -> None:
    """The session's one demo ``./run_all.sh`` (``conftest.demo_reports``: all six notebooks, default
    parameters, runs and features in the repository's shared cache as a user's would be): every notebook
    ran, and Table 3's results, files, index entry and page are what a reader expects."""
    out = demo_reports
    for nb in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert (out / nb.stem / "results.json").is_file(), f"{nb.stem} did not finish"
        assert (out / f"{nb.stem}.html").is_file()
    data = json.loads((out / "01_token_ablation" / "results.json").read_text())
    assert data["profile"] == "demo" and data["banner"] == experiments.DEMO_BANNER
    assert data["parameters"]["datasets"] == ["nyu", "kitti"]
    assert data["parameters"]["reports_dir"] == str(out.parent)
    assert data["versions"]["torch"] and "commit" in data["git"] and data["weights"]["id"] == "random:0"
    assert data["wall_seconds"] > 0
    names = [e.name for d in ("nyu", "kitti") for e in experiments.select(table="t3", dataset=d)]
    seeds = list(plan.DEFAULT_SEEDS["demo"])
    assert sorted(r["experiment"] for r in data["rows"]) == sorted(names * len(seeds))  # registry names
    assert [r["seed"] for r in data["rows"]] == [s for s in seeds for _ in names]  # seed-major
    for row in data["rows"]:
        assert row["protocol"]["mode"] == ("faithful" if experiments.get(row["experiment"]).trained else "untrained")
        assert row["protocol"]["bn"] == "adapt" and row["protocol"]["precision"] == "fp32"
        assert row["subset_label"] is None and row["stale"] is False and row["computed_by"]["commit"]
        for metric in METRIC_NAMES:
            assert isinstance(row[metric], float) and math.isfinite(row[metric]), (row["experiment"], metric)
        demo_epochs = experiments.PROFILES["demo"].epochs
        assert row["epochs"] == (demo_epochs if experiments.get(row["experiment"]).trained else 0)
    by_key = {(c["experiment"], c["metric"]): c for c in data["comparison"]}
    for name in names:
        assert by_key[(name, "abs_rel")]["paper"] == pytest.approx(reference_for(name)["abs_rel"])
        assert by_key[(name, "log_mse")]["paper"] == pytest.approx(reference_for(name)["log_mse"])
        assert by_key[(name, "rmse_log")]["paper"] is None
    assert set(data["figures"]) >= {"comparison_abs_rel.png", "qualitative_nyu.png", "qualitative_kitti.png"}
    for name in ("results.csv", "results.md", *data["figures"]):
        assert (out / "01_token_ablation" / name).is_file()
    index = (out / "index.html").read_text()
    assert experiments.DEMO_BANNER in index
    for name in names:
        assert f'data-experiment="{name}"' in index
    assert 'href="01_token_ablation.html"' in index and 'src="01_token_ablation/qualitative_nyu.png"' in index
    page = (out / "01_token_ablation.html").read_text()
    assert "run_rows" not in page, "the notebook page is rendered without code"
    assert experiments.DEMO_BANNER in page
    executed = json.loads((out / "01_token_ablation.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])


def test_rendered_page_has_no_progress_bar_widgets(tmp_path) -> None:
    """A progress bar in an executed notebook (tqdm with ipywidgets) must not reach the static page."""
    nb = nbformat.v4.new_notebook()
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    nb.cells = [nbformat.v4.new_code_cell("work()", outputs=[
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": view,
                                                     "text/plain": "epoch 1:   0%|          | 0/3"}),
        nbformat.v4.new_output("stream", text="abs_rel 0.412\n"),
    ])]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, str(path))
    assert runall._render_html(path, tmp_path / "run.html") is None
    page = (tmp_path / "run.html").read_text(encoding="utf-8")
    assert "abs_rel 0.412" in page
    assert "0/3" not in page and "widget-view+json\">" not in page and "unpkg.com" not in page
