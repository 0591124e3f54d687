"""The "Must show" items of issues 11 and 12, against the run machinery as it is.

Issue 11: two processes asking for one row at once (one computes, one waits and reuses; the result file
stays valid JSON), a weights file replaced at the same path (the row is recomputed and records the new
file's hash), a corrupt frame in the *test* split of a training row (the run stops before its first
step, naming the file); and the leftovers of item 1: the vocabulary sweep cache and ``./run_all.sh``'s
report folder are shared safely. Issue 12: editing a computing module makes finished rows stale
(recomputed by default, reused and labelled stale with ``allow_stale``, on every page), while editing
a report-layer module does not.

Every run is tiny (demo profile, random RN50, 8 training and 1-2 test frames, 1 epoch). Steps that
depend on the package's own files (the code fingerprint) or on two processes run as subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from clipdepth._files import file_lock
from clipdepth.data import DataError
from clipdepth.data.profile_data import open_split
from clipdepth.model.backbone import load_clip
from clipdepth.model.checkpoints import file_sha256
from clipdepth.run import run_all as runall
from clipdepth.study.experiments import resolve as resolve_row
from clipdepth.study.neighbours.sweep import vocab_sweep
from clipdepth.train._codeid import code_fingerprint, computing_modules
from clipdepth.train.lockstep import LockstepGroup, RunOptions, plan, run_units

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib"
N_TRAIN, N_TEST = 8, 1  # one optimiser step (batch 16), one test image


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The module's demo data (rendered once here, so concurrent processes never race on rendering)."""
    root = tmp_path_factory.mktemp("must-show-data")
    old = os.environ.get("CLIPDEPTH_DATA_DIR")
    os.environ["CLIPDEPTH_DATA_DIR"] = str(root)
    open_split(resolve_row("t3/nyu/learned-7", "demo", epochs=1), "test", N_TRAIN, N_TEST)
    yield root
    if old is None:
        os.environ.pop("CLIPDEPTH_DATA_DIR", None)
    else:
        os.environ["CLIPDEPTH_DATA_DIR"] = old


def _env(pythonpath: Path = LIB, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1", **extra}


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _options(root: Path, **kw) -> RunOptions:
    return RunOptions(runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), n_train=kw.pop("n_train", N_TRAIN),
                      n_test=kw.pop("n_test", N_TEST), keep_examples=0, **kw)


# -- issue 11, must show 1: two processes, one row, one runs folder --------------------------------------

_ONE_ROW = r"""
import json, sys, time
from pathlib import Path
from clipdepth.train.lockstep import RunOptions, run_units
from clipdepth.study.experiments import resolve as resolve_row

root, me = Path(sys.argv[1]), sys.argv[2]
row = resolve_row("t3/nyu/learned-7", "demo", "faithful", epochs=1)
options = RunOptions(runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), n_train=8, n_test=1,
                     keep_examples=0)
(root / f"ready-{me}").touch()  # a barrier: both processes ask for the row at the same moment
deadline = time.time() + 300
while len(list(root.glob("ready-*"))) < 2 and time.time() < deadline:
    time.sleep(0.02)
asked = time.time()
(result,) = run_units([row], options)
print(json.dumps({"reused": result.reused, "run_dir": str(result.run_dir), "asked": asked,
                  "metrics": result.metrics}))
"""


def test_two_processes_on_one_row_compute_it_once_and_a_third_run_reuses_it(tmp_path, data_dir, rn50):
    env = _env(CLIPDEPTH_DATA_DIR=str(data_dir))
    procs = [subprocess.Popen([sys.executable, "-c", _ONE_ROW, str(tmp_path), name], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("a", "b")]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        outs.append(_last_json(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)))
    assert sorted(o["reused"] for o in outs) == [False, True], "exactly one process computes the row"
    assert outs[0]["run_dir"] == outs[1]["run_dir"]
    assert outs[0]["metrics"] == outs[1]["metrics"]  # the waiting process read the other one's result
    run_dir = Path(outs[0]["run_dir"])
    result_file = run_dir / "result.json"
    finished_at = result_file.stat().st_mtime
    assert all(o["asked"] < finished_at for o in outs), "both asked while the row was still being computed"
    assert json.loads(result_file.read_text(encoding="utf-8"))["metrics"] == outs[0]["metrics"]  # valid JSON
    assert not [p.name for p in run_dir.iterdir() if ".tmp-" in p.name], "no temporaries left behind"
    (third,) = run_units([resolve_row("t3/nyu/learned-7", "demo", "faithful", epochs=1)], _options(tmp_path),
                         clip_provider=lambda arch, weights: rn50)
    assert third.reused and str(third.run_dir) == outs[0]["run_dir"] and third.metrics == outs[0]["metrics"]


# -- issue 11, must show 2: a weights file replaced at the same path -----------------------------------


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    """A plain ``torch.save(state_dict)`` checkpoint (float16 halves the file; the reader casts back)."""
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)


def test_replacing_the_weights_file_at_the_same_path_recomputes_the_row(tmp_path, data_dir, rn50):
    weights = tmp_path / "w.pt"
    options = _options(tmp_path)

    def run():
        (result,) = run_units([resolve_row("t3/nyu/depth-7", "demo", "faithful", weights=str(weights))], options)
        return result

    _save_weights(rn50, weights)
    first_id = f"sha256:{file_sha256(weights)}"
    first = run()
    assert not first.reused and first.provenance["weights_id"] == first_id
    again = run()
    assert again.reused and again.run_dir == first.run_dir  # same file: the finished row is found again

    _save_weights(load_clip("RN50-quickgelu", None, seed=1), weights)  # another model, same path and size
    second_id = f"sha256:{file_sha256(weights)}"
    assert second_id != first_id
    second = run()
    assert not second.reused, "checkpoint B must not be given checkpoint A's numbers"
    assert second.run_dir != first.run_dir
    assert second.provenance["weights_id"] == second_id
    assert json.loads((second.run_dir / "result.json").read_text())["provenance"]["weights_id"] == second_id
    assert second.metrics["abs_rel"] != first.metrics["abs_rel"]


# -- issue 11, must show 4: a corrupt test frame stops a training row before its first step ------------


@pytest.mark.parametrize("runner", ["lockstep", "trainer-faithful", "trainer-cached"])
def test_a_corrupt_test_frame_stops_a_training_row_before_the_first_step(tmp_path, rn50, monkeypatch, runner):
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path / "data"))  # this test damages its data
    row = resolve_row("t3/nyu/learned-7", "demo", "cached" if runner == "trainer-cached" else "faithful", epochs=1)
    options = _options(tmp_path, n_test=2)
    test_split = options.trainer(row).split("test")
    jpeg = test_split.items[1].rgb
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])  # truncated mid-scan
    steps: list[tuple[int, int]] = []
    with pytest.raises(DataError) as err:
        if runner == "lockstep":
            (unit,), _ = plan([row], options)
            assert isinstance(unit, LockstepGroup)
            unit.on_step = lambda epoch, step: steps.append((epoch, step))
            unit(rn50)
        else:
            options.trainer(row, rn50).run(on_step=lambda epoch, step: steps.append((epoch, step)))
    message = str(err.value)
    assert f"{jpeg}: cannot decode image" in message and f"line 2 of {test_split.split_file}" in message
    assert "\n" not in message
    assert steps == [], "no training step may run before the test data is known to be readable"
    runs = Path(options.runs_dir)
    assert not list(runs.rglob("result.json")) and not list(runs.rglob("epoch_*.pt"))
    assert not Path(options.cache_dir).exists() or not any(Path(options.cache_dir).iterdir())


# -- issue 12, must show 1: a changed computing module makes finished rows stale ------------------------

_NOTEBOOK = r"""
import json, sys
from pathlib import Path
from clipdepth.report import session as notebook
from clipdepth.report import index_page as report_html
from clipdepth.train._codeid import code_fingerprint

root = Path(sys.argv[1])
out = {"fingerprint": code_fingerprint(), "package": notebook.__file__}
for label in sys.argv[2:]:  # "fresh" or "stale" (allow_stale), each into its own reports folder
    params = {"seeds": [42], "datasets": ["nyu"], "subset": 1, "runs_dir": str(root / "runs"),
              "cache_dir": str(root / "cache"), "data_dir": str(root / "data"), "allow_stale": label == "stale"}
    reports = root / f"reports-{label}"
    ctx = notebook.start_notebook("01_token_ablation", params, profile="demo", reports_dir=reports)
    rows = notebook.run_rows(ctx, ["t3/nyu/depth-7"], keep_examples=0)
    notebook.finish_notebook(ctx, rows)
    (reports / "demo" / "index.html").write_text(report_html.render_index(reports / "demo"), encoding="utf-8")
    out[label] = [{k: r[k] for k in ("stale", "reused", "run_dir")} for r in rows]
print(json.dumps(out))
"""


def _copy_package(dest: Path) -> Path:
    shutil.copytree(LIB / "clipdepth", dest / "clipdepth", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _append_comment(package: Path, module: str) -> None:
    path = package / "clipdepth" / module
    path.write_text(path.read_text(encoding="utf-8") + "\n# an edit that changes no behaviour\n", encoding="utf-8")


def test_report_layer_edits_keep_the_fingerprint_computing_edits_change_it(tmp_path):
    modules = computing_modules()
    assert "clipdepth.eval.metrics" in modules and "clipdepth.train.trainer" in modules
    assert not {"clipdepth.report.figures", "clipdepth.report.index_page", "clipdepth.report.session",
                "clipdepth.run.run_all"} & set(modules)
    original = code_fingerprint(_copy_package(tmp_path / "original") / "clipdepth")
    report_edit = _copy_package(tmp_path / "report-edit")
    _append_comment(report_edit, "report/figures.py")
    _append_comment(report_edit, "report/index_page.py")
    assert code_fingerprint(report_edit / "clipdepth") == original
    metrics_edit = _copy_package(tmp_path / "metrics-edit")
    _append_comment(metrics_edit, "eval/metrics.py")
    assert code_fingerprint(metrics_edit / "clipdepth") != original


def test_a_changed_metrics_module_recomputes_rows_or_reuses_them_labelled_stale(tmp_path):
    package = _copy_package(tmp_path / "lib")  # the demo scenes are rendered into tmp_path/data on first use

    def notebook_run(*labels: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", _NOTEBOOK, str(tmp_path), *labels], env=_env(package),
                              capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
        return _last_json(proc)

    before = notebook_run("fresh")
    assert before["package"].startswith(str(package))  # the copy ran, not the worktree
    (old,) = before["fresh"]
    assert not old["reused"] and not old["stale"]
    assert Path(old["run_dir"]).name.endswith(f"-c{before['fingerprint'][:12]}")

    _append_comment(package, "eval/metrics.py")
    after = notebook_run("stale", "fresh")  # allow_stale first (the old run is the only one), then the default
    assert after["fingerprint"] != before["fingerprint"]
    (stale,) = after["stale"]
    assert stale == {"stale": True, "reused": True, "run_dir": old["run_dir"]}
    (fresh,) = after["fresh"]
    assert not fresh["reused"] and not fresh["stale"]
    assert fresh["run_dir"] != old["run_dir"] and Path(fresh["run_dir"]).name.endswith(f"-c{after['fingerprint'][:12]}")

    stale_dir, fresh_dir = tmp_path / "reports-stale" / "demo", tmp_path / "reports-fresh" / "demo"
    stale_md = (stale_dir / "01_token_ablation" / "results.md").read_text(encoding="utf-8")
    assert "> **stale**: 1 row(s) reused from runs computed by other code" in stale_md
    assert '<span class="stale"' in (stale_dir / "index.html").read_text(encoding="utf-8")
    assert json.loads((stale_dir / "01_token_ablation" / "results.json").read_text())["rows"][0]["stale"] is True
    assert "**stale**" not in (fresh_dir / "01_token_ablation" / "results.md").read_text(encoding="utf-8")
    assert '<span class="stale"' not in (fresh_dir / "index.html").read_text(encoding="utf-8")


# -- issue 11, item 1 leftovers: the vocabulary sweep cache and run_all's report folder --------------------


def test_no_fixed_or_private_temporary_names_remain_in_the_package():
    pattern = ('.tmp"', '".tmp-', "mkstemp", "mkdtemp", ".partial", "NamedTemporaryFile")
    found = [f"{p.relative_to(LIB)}: {needle}" for p in (LIB / "clipdepth").rglob("*.py") if p.name != "_files.py"
             for needle in pattern if needle in p.read_text(encoding="utf-8")]
    assert found == []


def test_two_threads_asking_for_one_sweep_entry_compute_it_once(tmp_path, rn50):
    cache = tmp_path / "neighbours"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from clipdepth._files import _HOST

    leftover = cache / f".x.tmp-{_HOST}-{int(dead.stdout)}-0000abcd"  # a build killed mid-way
    leftover.mkdir()
    barrier = threading.Barrier(2)
    out: dict[str, object] = {}

    def ask(name: str) -> None:
        barrier.wait()
        out[name] = vocab_sweep(rn50, "random:0", "RN50-quickgelu", vocab_limit=300, cache_dir=cache, progress=False)

    threads = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    a, b = out["a"], out["b"]
    assert sorted([a.from_cache, b.from_cache]) == [False, True], "one computes, the other waits and reuses"
    assert torch.equal(a.features, b.features)
    assert not leftover.exists(), "the dead build's temporary is removed"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [a.path.name]


def test_a_second_run_all_waits_for_the_first_saying_who_holds_the_reports(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
              "source": 'profile = "demo"'},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "print(1)"}]
    (nbdir / "01_tiny.ipynb").write_text(json.dumps({"cells": cells, "nbformat": 4, "nbformat_minor": 4, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}))
    out_dir = tmp_path / "reports" / "demo"
    release = threading.Event()
    held = threading.Event()

    def first_run_all() -> None:  # stands for another ./run_all.sh writing the same reports folder
        with runall.reports_lock(out_dir):
            held.set()
            release.wait(300)

    holder = threading.Thread(target=first_run_all)
    holder.start()
    assert held.wait(60)
    env = {**_env(), "CLIPDEPTH_PYTHON": sys.executable, "CLIPDEPTH_CALLER_CWD": str(tmp_path)}
    proc = subprocess.Popen([str(REPO / "run_all.sh"), "--notebooks-dir", str(nbdir), "--reports-dir",
                             str(tmp_path / "reports")], env=env, cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = proc.stderr.readline()
        assert line.strip() == f"run_all: another ./run_all.sh is writing {out_dir} (pid {os.getpid()} on " \
                               f"{os.uname().nodename}); waiting"
        time.sleep(1)
        assert proc.poll() is None and not (out_dir / "logs").exists(), "it waits and writes nothing meanwhile"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        release.set()
        holder.join(60)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert (out_dir / "logs" / "01_tiny.log").is_file() and (out_dir / "01_tiny.ipynb").is_file()
    assert not (out_dir / runall.OWNER_FILE).exists()
    with file_lock(out_dir, timeout=0):  # released when the run ended
        pass
