"""Real row groups through the executors (issue 15, must-show 1 and 2).

The units are those ``./run_all.sh`` plans (lockstep groups, a shared evaluation), run once through
``local`` worker processes and once as real submitit jobs (``submitit-local``): the results must be
bit-identical. A worker process running a lockstep group is then killed with SIGKILL mid-run; the rerun
resumes from the group checkpoint and ends bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipdepth.run.executors import ExecutorOptions, run_units
from clipdepth.train.lockstep import LockstepGroup, RunOptions, plan
from clipdepth.train.trainer import resolve_row

NAMES = ("t3/nyu/learned-7", "t4/nyu/1o1d", "t3/nyu/depth-7", "t3/nyu/random-7")
LIB = Path(__file__).resolve().parents[1] / "lib"


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "executor-data"))


def _units(root: Path, epochs: int = 1):
    rows = [resolve_row(n, "demo", "faithful", epochs=epochs) for n in NAMES]
    options = RunOptions(runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), n_train=18, n_test=3,
                         keep_examples=0)
    return plan(rows, options)[0], options


def _outputs(units, options) -> dict[str, tuple]:
    out = {}
    for unit in units:
        for trainer in unit.trainers():
            result = json.loads((trainer.run_dir / "result.json").read_text())
            prompts = torch.load(trainer.run_dir / "prompts.pt", weights_only=True)
            out[trainer.resolved.name] = (result["metrics"], result["per_image"], result["history"],
                                          {k: v.tolist() for k, v in prompts.items()})
    return out


def test_submitit_local_equals_local_bit_identical(tmp_path):
    outputs = {}
    for executor in ("local", "submitit-local"):
        units, options = _units(tmp_path / executor)
        assert sorted(u.kind for u in units) == ["lockstep", "shared-eval"]
        text = io.StringIO()
        report = run_units(units, tmp_path / executor / "logs", ExecutorOptions(executor, jobs=1), out=text,
                           poll_s=0.2)
        assert report.ok, text.getvalue()
        assert all(u.is_done() for u in units)
        outputs[executor] = _outputs(units, options)
    assert outputs["local"] == outputs["submitit-local"]
    assert set(outputs["local"]) == set(NAMES)
    # a rerun submits nothing: every unit is done
    units, _ = _units(tmp_path / "local")
    report = run_units(units, tmp_path / "local" / "logs", ExecutorOptions("local"), out=io.StringIO())
    assert [o.status for o in report.outcomes] == ["skipped", "skipped"]


def test_killed_group_job_resumes_bit_identical(tmp_path):
    epochs = 3
    straight_units, straight_options = _units(tmp_path / "straight", epochs)
    for unit in straight_units:
        unit()
    units, options = _units(tmp_path / "killed", epochs)
    (group,) = [u for u in units if isinstance(u, LockstepGroup)]
    job = tmp_path / "unit.pkl"
    job.write_bytes(pickle.dumps(group))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", f"import pickle; pickle.load(open({str(job)!r}, 'rb'))()"],
                            env=env)
    groups = Path(options.runs_dir) / "groups"
    deadline = time.time() + 600
    while not list(groups.glob("*/epoch_001.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; give it more epochs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not group.is_done()
    report = run_units(units, tmp_path / "killed" / "logs", ExecutorOptions("local"), out=io.StringIO())
    assert report.ok
    assert _outputs(units, options) == _outputs(straight_units, straight_options)
