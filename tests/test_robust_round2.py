"""Bad input, round two (issue 23): one line naming the file or parameter, the right exit status, and
nothing written -- for integer predictions, bad weights files, errors raised inside workers, Ctrl-C,
output folders that cannot be written, split lists with Windows line endings and the small ones
(``-p epochs 0``, a negative ``--timeout``, ``--plan`` writing the demo scenes, stale worker logs).

The run_all cases run ``./run_all.sh`` as a user would; the Ctrl-C case sends SIGINT to its process
group during a small demo run (one table notebook's row groups, ``--subset 2``, one epoch) and checks
that the rerun finishes with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _units import StepUnit
from test_score import NYU_NAMES
from test_score import nyu as nyu_test_set  # noqa: F401  (a fixture: the test set in the real layout)

from clipdepth.data.splits import verify_split_file
from clipdepth.data.synthetic import ensure_synthetic_dataset
from clipdepth.eval.score import score_predictions
from clipdepth.run import run_all as runall
from clipdepth.run.cli import main as clipdepth_main
from clipdepth.run.executors import ExecutorOptions, run_units

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "run_all.sh"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CLIPDEPTH_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO / "lib"), **extra}


def _run_all(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN_ALL), *args], capture_output=True, text=True, env=_env(), timeout=timeout,
                          cwd=str(cwd))


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- 1. clipdepth score: integer arrays, clamped maps ------------------------------------------------------


@pytest.fixture(scope="module")
def nyu(request):
    """test_score's two NYU test frames in the BTS layout, with the ground truth in millimetres as NYU stores it."""
    test_set = request.getfixturevalue("nyu_test_set")
    return {**test_set, "mm": {name: np.round(gt * 1000).astype(np.uint16) for name, gt in test_set["gt"].items()}}


def _save(folder: Path, maps: dict[str, np.ndarray]) -> Path:
    for name, array in maps.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", array)
    return folder


def _score(nyu, preds: Path, *extra: str) -> list[str]:
    return ["score", str(preds), "--dataset", "nyu", "--root", str(nyu["root"]), "--split-file", str(nyu["split"]),
            "--no-fetch", *extra]


def test_integer_predictions_need_a_scale(nyu, tmp_path, capsys) -> None:
    noisy = {n: (m.astype(np.int64) + 37).astype(np.uint16) for n, m in nyu["mm"].items()}  # millimetres
    preds = _save(tmp_path / "pred", noisy)
    out = tmp_path / "out"
    assert clipdepth_main(_score(nyu, preds, "--out", str(out))) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith(f"error: {preds / NYU_NAMES[0]}.npy: prediction is an integer array (uint16)")
    assert "--scale" in line and captured.out == "" and not out.exists()

    # with the scale: exactly the scores of the same maps saved as float metres
    assert clipdepth_main(_score(nyu, preds, "--scale", "1000", "--out", str(out))) == 0
    assert capsys.readouterr().err == ""  # read as metres: no clamp warning
    metres = _save(tmp_path / "metres", {n: m.astype(np.float64) / 1000 for n, m in noisy.items()})
    expected = score_predictions(metres, "nyu", nyu["root"], split_file=nyu["split"], fetch=False)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["per_image_mean"] == pytest.approx(expected.per_image_mean, rel=0, abs=0)
    assert 0 < saved["settings"]["clamped_at_max"] < 0.01  # pixels within 37 mm of 10 m


def test_most_pixels_clamped_is_a_loud_warning(nyu, tmp_path, capsys) -> None:
    preds = _save(tmp_path / "pred", {n: m.astype(np.float32) for n, m in nyu["mm"].items()})  # mm as floats
    assert clipdepth_main(_score(nyu, preds)) == 0
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("WARNING: 100% of the valid pixels were clamped to the maximum depth (10 m)")


# -- 2. weights files, in the demo profile and in --plan ---------------------------------------------------


def _truncated_checkpoint(path: Path) -> Path:
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(("kind", "plan", "says"), [
    ("empty", False, "not a checkpoint (expected an OpenAI TorchScript archive, an open_clip .bin/.safetensors or a "
                     "state dict); the file is empty"),
    ("text", False, "not a checkpoint"),
    ("truncated", True, "truncated or damaged zip archive"),
    ("directory", True, "is a directory"),
])
def test_a_bad_weights_file_stops_before_any_worker(tmp_path: Path, kind: str, plan: bool, says: str) -> None:
    weights = tmp_path / "weights.pt"
    if kind == "empty":
        weights.write_bytes(b"")
    elif kind == "text":
        weights.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        _truncated_checkpoint(weights)
    else:
        weights.mkdir()
    proc = _run_all(["--only", "01", "-p", "weights", "weights.pt", "-p", "data_dir", "data", "--reports-dir",
                     "reports", *(["--plan"] if plan else [])], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("run_all: error: parameter 'weights': ") and str(weights) in line and says in line
    assert not (tmp_path / "reports").exists() and not (tmp_path / "data").exists()


def test_a_directory_is_named_as_one_by_the_checkpoint_reader(tmp_path: Path) -> None:
    from clipdepth.model.checkpoints import CheckpointError, read_state_dict, weights_id

    for call in (lambda: read_state_dict(tmp_path, "RN50-quickgelu"), lambda: weights_id(str(tmp_path) + "/")):
        with pytest.raises(CheckpointError) as err:
            call()
        assert str(err.value).startswith(f"{tmp_path}: is a directory, not a weights file")


def test_plan_writes_nothing(tmp_path: Path) -> None:
    proc = _run_all(["--plan", "--only", "01", "-p", "datasets", "nyu", "-p", "data_dir", "data", "-p", "runs_dir",
                     "runs", "--reports-dir", "reports"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "lockstep    seeds [42] epochs 3: 1 row(s) (1 to compute); 48 train / 12 test images" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data/, no runs/, no reports/


# -- 3. errors raised on purpose inside workers: their one line, whichever executor -------------------------


@pytest.mark.parametrize("executor", ["local", "submitit-local"])
def test_project_errors_in_workers_arrive_as_their_line(tmp_path: Path, executor: str) -> None:
    root = str(tmp_path / "runs")
    good, bad = StepUnit("good", "good group", root), StepUnit("bad", "bad group", root, refuse_at=1)
    out = io.StringIO()
    report = run_units([good, bad], tmp_path / "logs", ExecutorOptions(executor, jobs=2), out=out, poll_s=0.1)
    (failed,) = report.failed
    line = f"{bad.folder / 'frame.png'}: truncated PNG file (unit bad, step 1)"
    assert failed.refused and failed.error == line and good.is_done()
    shown = [t for t in out.getvalue().splitlines() if "[FAILED]" in t]
    assert shown == [f"  [FAILED] bad group: {line} (log {failed.stdout})"]
    assert "Traceback" not in out.getvalue() and "Traceback" in Path(failed.stderr).read_text()  # kept in its log


def test_a_corrupt_frame_found_in_a_worker_is_one_line(tmp_path: Path) -> None:
    scenes = ensure_synthetic_dataset("indoor", tmp_path / "data/synthetic/indoor/train48_test12_160x224_seed0",
                                      48, 12, seed=0, size=(160, 224))
    depth = sorted((scenes / "official_splits/test").rglob("sync_depth_*.png"))[0]
    depth.write_bytes(depth.read_bytes()[:100])  # truncated
    proc = _run_all(["--only", "01", "-p", "datasets", "nyu", "-p", "data_dir", "data", "-p", "runs_dir", "runs",
                     "--reports-dir", "reports"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("run_all: error: 1 unusable file(s) in the data this run reads: ") and str(depth) in line
    assert "no notebook was run" in proc.stdout
    assert not list((tmp_path / "runs").glob("*/result.json")) and not (tmp_path / "reports/demo/index.html").exists()


# -- 4. Ctrl-C ----------------------------------------------------------------------------------------------


def _stub_notebooks(folder: Path) -> Path:
    """Table notebook 01 with its real parameters cell and nothing else: run_all plans and trains its row
    groups as for the real one; the notebook itself then only starts a kernel."""
    nb = json.loads((REPO / "notebooks/01_token_ablation.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    nb["cells"] = [params, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                            "source": "print('rows computed')"}]
    folder.mkdir()
    (folder / "01_token_ablation.ipynb").write_text(json.dumps(nb))
    return folder


def _outputs(runs: Path) -> dict[str, tuple]:
    out = {}
    for result in sorted(runs.glob("*/result.json")):
        data = json.loads(result.read_text())
        out[data["name"]] = (data["metrics"], (result.parent / "prompts.pt").read_bytes())
    return out


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    nbs = _stub_notebooks(tmp_path / "nbs")
    small = ["--notebooks-dir", str(nbs), "-p", "datasets", "nyu", "-p", "epochs", "2", "--subset", "2",
             "-p", "data_dir", "data"]
    proc = subprocess.Popen([str(RUN_ALL), *small, "-p", "runs_dir", "runs", "--reports-dir", "reports"],
                            env=_env(), cwd=str(tmp_path), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Interrupt the moment the first row group is reported done: with one worker the second group has
        # only just been handed over then (it still has to build its model and train two epochs), so it is
        # never finished. (Waiting a fixed time here raced with a fast machine finishing it.)
        for line in proc.stdout:
            if "[ok] shared-eval" in line:
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stdout, stderr = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, stdout + stderr
    assert _one_line(stderr) == runall.INTERRUPTED
    assert not multiprocessing_leftovers(proc.pid)

    rerun = _run_all([*small, "-p", "runs_dir", "runs", "--reports-dir", "reports"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "local: 1 unit(s) to run, 1 already done" in rerun.stdout  # the finished group was kept
    reference = _run_all([*small, "-p", "runs_dir", "ref_runs", "--reports-dir", "ref_reports"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    got, want = _outputs(tmp_path / "runs"), _outputs(tmp_path / "ref_runs")
    assert len(want) == 6 and got == want


def multiprocessing_leftovers(session: int) -> list[str]:
    """Processes still running in the interrupted run's session (its workers must have been stopped);
    exited ones waiting to be reaped (zombies) do not count."""
    left = subprocess.run(["ps", "-o", "stat=,pid=,args=", "-s", str(session)], capture_output=True, text=True).stdout
    return [line for line in left.splitlines() if line.strip() and not line.lstrip().startswith("Z")]


# -- 5. output folders ------------------------------------------------------------------------------------


def test_reports_dir_that_is_a_file_stops_before_work(tmp_path: Path) -> None:
    (tmp_path / "reports").write_text("not a folder\n")
    proc = _run_all(["--only", "01", "-p", "data_dir", "data", "--reports-dir", "reports"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert _one_line(proc.stderr) == (f"run_all: error: --reports-dir {tmp_path / 'reports'}: "
                                      f"{tmp_path / 'reports'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_score_out_that_is_a_file_is_checked_before_scoring(nyu, tmp_path, capsys) -> None:
    preds = _save(tmp_path / "pred", {n: m.astype(np.float64) / 1000 for n, m in nyu["mm"].items()})
    out = tmp_path / "scores.json"
    out.write_text("{}")
    assert clipdepth_main(_score(nyu, preds, "--out", str(out))) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err) == f"error: --out {out}: {out} is a file, not a folder"
    assert captured.out == "" and out.read_text() == "{}"  # nothing scored, nothing overwritten


# -- 6. split lists with Windows line endings -------------------------------------------------------------


def test_a_split_list_with_crlf_line_endings_passes_its_checksum(tmp_path: Path) -> None:
    import hashlib

    lines = "bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579\nbedroom/rgb_00059.jpg x.png 518.8579\n"
    listed = tmp_path / "nyudepthv2_test_files_with_gt.txt"
    listed.write_bytes(lines.replace("\n", "\r\n").encode())
    published = hashlib.sha256(lines.encode()).hexdigest()
    assert verify_split_file(listed, published, "the canonical BTS list") == listed
    listed.write_bytes(lines.replace("59", "60").encode())  # another list still fails, in one line
    with pytest.raises(ValueError, match=r"split list checksum mismatch") as err:
        verify_split_file(listed, published, "the canonical BTS list")
    assert len(str(err.value).splitlines()) == 1 and str(listed) in str(err.value)


# -- 7. the small ones -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "epochs", "0"], "run_all: error: parameter 'epochs': 0 is not allowed (0 epochs would turn the trained "
                            "rows into untrained evaluations, which every run already reports); allowed: an integer "
                            ">= 1, or None"),
    (["--timeout", "-5"], "run_all: error: --timeout -5: must be a number of seconds >= 1 (leave it out for no "
                          "timeout)"),
])
def test_small_ones_are_refused_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _run_all([*args, "--reports-dir", "reports"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert _one_line(proc.stderr) == message
    assert not (tmp_path / "reports").exists()


def test_a_units_log_is_new_for_each_run_and_names_its_process(tmp_path: Path) -> None:
    root, logs = str(tmp_path / "runs"), tmp_path / "logs"
    first = run_units([StepUnit("g", "group", root, fail_at=1)], logs, out=io.StringIO())
    second = run_units([StepUnit("g", "group", root)], logs, out=io.StringIO())
    (a,), (b,) = first.outcomes, second.outcomes
    log = Path(b.stdout).read_text()
    assert a.status == "failed" and b.status == "ok" and a.job_id != b.job_id
    assert log.count("[clipdepth] unit g") == 1 and f", {b.job_id}," in log.splitlines()[0]
    assert "fails at step 1" not in log  # the first run's error is not appended to the second's log
