"""clipdepth.run.executors: local worker processes, real submitit LocalExecutor jobs, and Slurm's fail-fast path.

The unit is the stand-in ``tests/_units.StepUnit`` (a resumable hash chain ending in a float matrix
product), so these tests prove the executor layer: same files whichever executor ran a unit, reruns
that run only what is missing, failures reported with job id, log and error, killed and preempted
jobs that resume to the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _units import StepUnit

from clipdepth.run import run_all as runall
from clipdepth.run.executors import (
    ExecutionReport,
    ExecutorError,
    ExecutorOptions,
    SlurmOptions,
    options_from_args,
    parse_extra,
    parse_minutes,
    run_units,
)

LIB = Path(__file__).resolve().parents[1] / "lib"


def _run(units, logs, executor, **kw) -> tuple[ExecutionReport, str]:
    out = io.StringIO()
    report = run_units(units, logs, ExecutorOptions(executor, jobs=kw.pop("jobs", 1)), out=out, poll_s=0.1, **kw)
    return report, out.getvalue()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _reference(tmp_path: Path, key: str, seed: int, steps: int) -> bytes:
    """The unit computed in this process, uninterrupted: what every executor must reproduce."""
    unit = StepUnit(key, key, str(tmp_path / "reference"), steps=steps, seed=seed)
    unit()
    return unit.result_path.read_bytes()


def _job_folders(logs: Path) -> list[str]:
    return sorted(p.name for p in (logs / "submitit").iterdir() if p.is_dir() and p.name != "%j")


def test_submitit_local_and_local_produce_identical_files(tmp_path):
    files = {}
    for executor in ("local", "submitit-local"):
        root = tmp_path / executor / "runs"
        units = [StepUnit(f"g{i}", f"group {i}", str(root), steps=3, seed=i) for i in (1, 2)]
        report, text = _run(units, tmp_path / executor / "logs", executor, jobs=2, gpus=["0", "1"])
        assert [o.status for o in report.outcomes] == ["ok", "ok"], text
        files[executor] = {u.key: u.result_path.read_bytes() for u in units}
        seen = [json.loads((u.folder / "env.json").read_text())["CUDA_VISIBLE_DEVICES"] for u in units]
        if executor == "submitit-local":  # one job per slot, the slots take the GPUs in order
            assert seen == ["0", "1"]
        else:  # the workers took the GPUs round robin: a worker keeps its GPU, two workers have two GPUs
            pids = [(u.folder / "pid").read_text() for u in units]
            assert set(seen) <= {"0", "1"}
            assert len(set(zip(pids, seen, strict=True))) == len(set(pids)) == len(set(seen))
        for outcome in report.outcomes:
            assert f"[ok] {outcome.label}: job {outcome.job_id}" in text
            assert f"[clipdepth] unit {outcome.key} (" in Path(outcome.stdout).read_text()
    assert files["local"] == files["submitit-local"]
    assert files["local"] == {k: _reference(tmp_path, k, seed, 3) for k, seed in (("g1", 1), ("g2", 2))}
    assert files["local"]["g1"] != files["local"]["g2"]


def test_rerun_submits_only_missing_units(tmp_path):
    root, logs = str(tmp_path / "runs"), tmp_path / "logs"
    g1, g2 = (StepUnit(f"g{i}", f"group {i}", root, seed=i) for i in (1, 2))
    first, _ = _run([g1], logs, "submitit-local")
    assert [o.status for o in first.outcomes] == ["ok"]
    assert len(_job_folders(logs)) == 1

    second, text = _run([g1, g2], logs, "submitit-local")
    assert [o.status for o in second.outcomes] == ["skipped", "ok"]
    assert "1 unit(s) to run, 1 already done" in text
    assert _lines(g1.folder / "calls.log") == ["start 0"]  # g1 was not run again
    assert _job_folders(logs) == sorted([first.outcomes[0].job_id, second.outcomes[1].job_id])

    third, text = _run([g1, g2], logs, "submitit-local")
    assert [o.status for o in third.outcomes] == ["skipped", "skipped"]
    assert "0 unit(s) to run, 2 already done" in text
    assert len(_job_folders(logs)) == 2


@pytest.mark.parametrize("executor", ["local", "submitit-local"])
def test_failure_names_job_log_and_error_and_keeps_finished_units(tmp_path, executor):
    root, logs = str(tmp_path / "runs"), tmp_path / "logs"
    good = StepUnit("good", "good group", root)
    bad = StepUnit("bad", "bad group", root, fail_at=1)
    report, text = _run([good, bad], logs, executor, jobs=2)

    assert not report.ok
    assert [o.key for o in report.finished] == ["good"] and good.is_done()
    (failed,) = report.failed
    assert failed.key == "bad" and failed.job_id
    assert failed.error.splitlines()[-1] == "RuntimeError: unit bad fails at step 1 on purpose"
    assert "RuntimeError: unit bad fails at step 1 on purpose" in Path(failed.stderr).read_text()
    for shown in (f"[FAILED] bad group (unit bad): job {failed.job_id}", failed.stderr,
                  "RuntimeError: unit bad fails at step 1 on purpose", "1 of 2 unit(s) failed: bad"):
        assert shown in text
    saved = json.loads((logs / "executor-report.json").read_text())
    assert [(u["key"], u["status"], u["job_id"]) for u in saved["units"]] == [
        ("good", "ok", report.outcomes[0].job_id), ("bad", "failed", failed.job_id)]

    # fixed, the rerun runs only the failed unit, which resumes after its last checkpoint
    rerun, _ = _run([good, StepUnit("bad", "bad group", root)], logs, executor)
    assert [o.status for o in rerun.outcomes] == ["skipped", "ok"]
    assert _lines(bad.folder / "calls.log") == ["start 0", "start 1"]
    assert bad.result_path.read_bytes() == _reference(tmp_path, "bad", 0, 3)


def _run_in_thread(units, logs, executor, reports):
    thread = threading.Thread(target=lambda: reports.append(_run(units, logs, executor)), daemon=True)
    thread.start()
    return thread


def _wait_for_steps(unit: StepUnit, n: int, timeout: float = 30.0) -> int:
    """Wait until ``unit`` has computed ``n`` steps; return the pid of the process running it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_lines(unit.folder / "steps.log")) >= n and (unit.folder / "pid").is_file():
            return int((unit.folder / "pid").read_text())
        time.sleep(0.05)
    raise AssertionError(f"unit {unit.key} did not reach step {n} within {timeout} s")


@pytest.mark.parametrize("executor", ["local", "submitit-local"])
def test_killed_job_resumes_on_rerun_bit_identical(tmp_path, executor):
    root, logs = str(tmp_path / "runs"), tmp_path / "logs"
    slow = StepUnit("g", "group", root, steps=8, delay_s=0.25)
    reports: list = []
    thread = _run_in_thread([slow], logs, executor, reports)
    os.kill(_wait_for_steps(slow, 2), signal.SIGKILL)  # like a node failure or the OOM killer
    thread.join(60)
    (report, text), = reports
    (failed,) = report.failed
    assert "killed" in failed.error and f"job {failed.job_id}" in text
    assert not slow.is_done()

    rerun, _ = _run([StepUnit("g", "group", root, steps=8)], logs, executor)
    assert [o.status for o in rerun.outcomes] == ["ok"]
    starts = [int(line.split()[1]) for line in _lines(slow.folder / "calls.log")]
    assert starts[0] == 0 and 2 <= starts[1] < 8  # the second call continued from the checkpoint
    assert len(_lines(slow.folder / "steps.log")) == 8  # no step computed twice
    assert slow.result_path.read_bytes() == _reference(tmp_path, "g", 0, 8)


def test_preempted_job_is_requeued_by_submitit_and_resumes(tmp_path):
    """The preemption signal (USR2) makes submitit call SubmittedUnit.checkpoint and requeue the job."""
    root, logs = str(tmp_path / "runs"), tmp_path / "logs"
    slow = StepUnit("g", "group", root, steps=8, delay_s=0.25)
    reports: list = []
    thread = _run_in_thread([slow], logs, "submitit-local", reports)
    os.kill(_wait_for_steps(slow, 2), signal.SIGUSR2)
    thread.join(60)
    (report, text), = reports
    (outcome,) = report.outcomes
    assert outcome.status == "ok", text
    assert "requeued with the same unit" in Path(outcome.stdout).read_text()
    starts = [int(line.split()[1]) for line in _lines(slow.folder / "calls.log")]
    assert starts[0] == 0 and 2 <= starts[1] < 8
    assert _job_folders(logs) == [outcome.job_id]  # one job, requeued, not a second submission
    assert slow.result_path.read_bytes() == _reference(tmp_path, "g", 0, 8)


def test_slurm_without_sbatch_fails_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    unit = StepUnit("g", "group", str(tmp_path / "runs"))
    with pytest.raises(ExecutorError, match="sbatch and srun not found on PATH"):
        run_units([unit], tmp_path / "logs", ExecutorOptions("slurm"))
    assert not unit.folder.exists() and not (tmp_path / "logs").exists()

    # the CLI checks this first: before notebooks are looked for (this folder has none)
    assert runall.main(["--executor", "slurm", "--notebooks-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_all: error: --executor slurm: sbatch and srun not found on PATH")
    assert len(err.strip().splitlines()) == 1

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "clipdepth.run.run_all", "--executor", "slurm"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(LIB)}, cwd=tmp_path)
    assert proc.returncode == 2 and "cannot submit Slurm jobs" in proc.stderr
    assert time.monotonic() - t0 < 30


def _args(*argv: str):
    return runall._parser().parse_args(list(argv))


def test_executor_options_from_the_command_line(tmp_path, monkeypatch):
    assert options_from_args(_args()) == ExecutorOptions("local", 1)
    options = options_from_args(_args("--executor", "submitit-local", "--jobs", "3", "-x", "timeout_min=90",
                                      "-x", "setup=['module load cuda']"))
    assert options == ExecutorOptions("submitit-local", 3, extra={"timeout_min": 90, "setup": ["module load cuda"]})

    assert [parse_minutes(t) for t in ("90", "01:30:00", "10:30", "2-00:00:00", "1-12", "00:00:01")] == [
        90, 90, 11, 2880, 2160, 1]
    assert parse_extra(["mem_gb=64", "account=proj", "exclusive=True"]) == {
        "mem_gb": 64, "account": "proj", "exclusive": True}
    with pytest.raises(SystemExit):  # argparse: exit status 2
        _args("--slurm-time", "1h")
    for argv, message in [
        (["--slurm-partition", "gpu"], "apply to --executor slurm only"),
        (["-x", "mem_gb=64"], "-x applies to the submitit executors only"),
        (["--executor", "submitit-local", "-x", "partition=gpu"], "not a parameter of submitit's LocalExecutor"),
        (["--executor", "submitit-local", "-x", "oops"], "expected KEY=VALUE"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ]:
        with pytest.raises(ExecutorError, match=message):
            options_from_args(_args(*argv))

    # with Slurm's commands on PATH, the Slurm options are checked against submitit's parameter names
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for exe in ("sbatch", "srun"):
        (bin_dir / exe).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / exe).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = options_from_args(_args("--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "4:00:00",
                                      "--slurm-gpus-per-job", "2", "--slurm-array-parallelism", "4",
                                      "-x", "account=proj", "-x", "mem_gb=64"))
    assert options.slurm == SlurmOptions("gpu", 2, 240, 4)
    assert options.extra == {"account": "proj", "mem_gb": 64}
    with pytest.raises(ExecutorError, match="-x acount: not a submitit Slurm parameter"):
        options_from_args(_args("--executor", "slurm", "-x", "acount=proj"))


FAKE_SBATCH = r"""#!/bin/bash
# fake sbatch: keeps a copy of the script, answers like sbatch, then runs the array's tasks one by one
cp "$1" "$FAKE_SLURM_DIR/submitted.sh"
range=$(sed -n 's/^#SBATCH --array=\([0-9]*-[0-9]*\).*/\1/p' "$1")
echo "Submitted batch job 4242"
(
  for i in $(seq 0 "${range#*-}"); do
    SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i SLURM_JOB_ID=$((4243 + i)) SLURM_NTASKS=1 SLURM_PROCID=0 \
      SLURM_LOCALID=0 SLURM_NODEID=0 SLURM_JOB_NUM_NODES=1 bash "$1"
  done
) </dev/null >/dev/null 2>&1 &
"""
FAKE_SRUN = r"""#!/bin/bash
# fake srun: fills Slurm's %A %a %j %t into --output/--error, then runs the command
while [ $# -gt 0 ]; do
  case "$1" in --output) out=$2; shift 2;; --error) err=$2; shift 2;; --*) shift;; *) break;; esac
done
fill() {
  local s=$1; s=${s//%A/$SLURM_ARRAY_JOB_ID}; s=${s//%a/$SLURM_ARRAY_TASK_ID}; s=${s//%j/$SLURM_JOB_ID}
  echo "${s//%t/0}"
}
o=$(fill "$out"); e=$(fill "$err"); mkdir -p "$(dirname "$o")"
exec "$@" >>"$o" 2>>"$e"
"""


def test_slurm_path_with_fake_sbatch_runs_one_array(tmp_path, monkeypatch):
    """Slurm replaced by two shell scripts: the parameters reach the sbatch script, the missing units go
    out as one job array, and array job ids, logs and errors come back through submitit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    root, logs = str(tmp_path / "runs"), tmp_path / "logs"
    done = StepUnit("g0", "group 0", root)
    done()
    units = [done, StepUnit("g1", "group 1", root, seed=1), StepUnit("g2", "group 2", root, fail_at=0)]
    options = options_from_args(_args("--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "4:00:00",
                                      "--slurm-gpus-per-job", "2", "--slurm-array-parallelism", "1",
                                      "-x", "account=proj", "-x", "mem_gb=64"))
    out = io.StringIO()
    report = run_units(units, logs, options, out=out, poll_s=0.1)

    script = (tmp_path / "submitted.sh").read_text().splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --array=0-1%1", "#SBATCH --account=proj", "#SBATCH --mem=64GB"):
        assert line in script
    assert [(o.status, o.job_id) for o in report.outcomes] == [("skipped", ""), ("ok", "4242_0"),
                                                                ("failed", "4242_1")]
    assert StepUnit("g1", "", root, seed=1).result_path.read_bytes() == _reference(tmp_path, "g1", 1, 3)
    failed = report.failed[0]
    assert failed.error.endswith("RuntimeError: unit g2 fails at step 0 on purpose")
    assert failed.stderr == str(logs / "submitit" / "4242_1" / "4242_1_0_log.err")
    assert "RuntimeError: unit g2 fails at step 0 on purpose" in Path(failed.stderr).read_text()
    assert "slurm: submitted 2 job(s) as array 4242" in out.getvalue()


def test_refused_slurm_submission_is_one_line(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n"),
                       ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    unit = StepUnit("g", "group", str(tmp_path / "runs"))
    with pytest.raises(ExecutorError, match="^slurm: the submission was refused: sbatch: error: invalid partition"):
        run_units([unit], tmp_path / "logs", ExecutorOptions("slurm", slurm=SlurmOptions("nope")), out=io.StringIO())
