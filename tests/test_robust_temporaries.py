"""Killed builds leave no partial folders forever; concurrent builds of one entry compute it once.

Real subprocesses are killed with SIGKILL in the middle of a feature-cache build; the next build
removes the dead process's temporary (and says so), and two processes asking for the same entry at
once share one computation (the second waits on the entry's lock, then reuses the first's result).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdepth.data.synthetic import ensure_synthetic_dataset
from clipdepth.train.feature_cache import FeatureCache, FeatureKey

KEY = FeatureKey("RN50-quickgelu", "random:0", "depthclip", "imagenet", (8, 8), "robust", "test")

#: A child process building KEY's entry: its compute function records each call in ``calls/``, and
#: the first call announces itself with ``started-<pid>`` and blocks until ``release`` exists (so a
#: kill lands mid-build, or a second process has time to queue on the lock).
WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import numpy as np, torch
    from clipdepth.train.feature_cache import FeatureCache, FeatureKey

    root, marks = Path(sys.argv[1]), Path(sys.argv[2])
    key = FeatureKey("RN50-quickgelu", "random:0", "depthclip", "imagenet", (8, 8), "robust", "test")
    pid = os.getpid()
    (marks / f"ready-{pid}").touch()

    def compute(idx):
        (marks / "calls" / f"{pid}-{idx[0]}").touch()
        if idx[0] == 0:
            (marks / f"started-{pid}").touch()
            while not (marks / "release").exists():
                time.sleep(0.05)
        feats = torch.arange(len(idx) * 4, dtype=torch.float32).view(len(idx), 1, 2, 2) + idx[0]
        return feats, np.full((len(idx), 8, 8), 2.5)

    entry = FeatureCache(root).get_or_build(key, 4, compute, batch_size=2, progress=False)
    (marks / f"done-{pid}").write_text(repr(float(np.asarray(entry.features, dtype=np.float32).sum())))
    """
)


def _spawn(root: Path, marks: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(marks)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path_glob: tuple[Path, str], count: int = 1, timeout: float = 120.0) -> list[Path]:
    folder, pattern = path_glob
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = sorted(folder.glob(pattern))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {count} x {pattern} in {folder}")


def _compute(idx):
    feats = torch.arange(len(idx) * 4, dtype=torch.float32).view(len(idx), 1, 2, 2) + idx[0]
    return feats, np.full((len(idx), 8, 8), 2.5)


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    (folder / "calls").mkdir(parents=True)
    return folder


def test_killed_build_leaves_a_temporary_that_the_next_build_removes(tmp_path, marks, capsys):
    root = tmp_path / "features"
    proc = _spawn(root, marks)
    try:
        _wait_for((marks, f"started-{proc.pid}"))
        partial = [p for p in root.iterdir() if ".tmp-" in p.name]
        assert len(partial) == 1 and partial[0].is_dir(), "the killed build was writing a temporary folder"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)  # reaped: its pid no longer runs
    assert proc.returncode == -signal.SIGKILL

    entry = FeatureCache(root).get_or_build(KEY, 4, _compute, batch_size=2, progress=False)
    err = capsys.readouterr().err
    assert f"removed {partial[0]}: left behind by process {proc.pid}, which is no longer running" in err
    assert not partial[0].exists()
    assert [p.name for p in root.iterdir() if ".tmp-" in p.name] == []
    assert entry.features.shape == (4, 1, 2, 2) and float(entry.features[3, 0, 1, 1]) == 2 + 7.0


def test_two_processes_building_one_entry_compute_it_once(tmp_path, marks):
    root = tmp_path / "features"
    procs = [_spawn(root, marks) for _ in range(2)]
    try:
        _wait_for((marks, "ready-*"), count=2)
        _wait_for((marks, "started-*"))
        time.sleep(1.0)  # the other process is now queued on the entry's lock (or still importing)
        (marks / "release").touch()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    calls = sorted(p.name for p in (marks / "calls").iterdir())
    builder = calls[0].split("-")[0]
    assert calls == [f"{builder}-0", f"{builder}-2"], "one process computes, the other reuses"
    sums = {p.name: p.read_text() for p in marks.glob("done-*")}
    assert len(sums) == 2 and len(set(sums.values())) == 1
    expected = float(sum(_compute([i, i + 1])[0].sum() for i in (0, 2)))  # the same function, in this process
    assert float(next(iter(sums.values()))) == expected


def test_cache_entries_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        entry = FeatureCache(tmp_path / "fc").get_or_build(KEY, 2, _compute, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o775
    for name in ("features.npy", "depth.npy", "manifest.json"):
        assert stat.S_IMODE((entry.path / name).stat().st_mode) == 0o664, name


def test_synthetic_dataset_build_removes_dead_temporaries_and_follows_the_umask(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from clipdepth._files import _HOST

    stale = tmp_path / f".nyu.tmp-{_HOST}-{dead.pid}-deadbeef"
    (stale / "sync").mkdir(parents=True)
    old = os.umask(0o002)
    try:
        root = ensure_synthetic_dataset("indoor", tmp_path / "nyu", 1, 1, seed=0, size=(32, 32))
    finally:
        os.umask(old)
    assert f"removed {stale}: left behind by process {dead.pid}" in capsys.readouterr().err
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []
    assert stat.S_IMODE(root.stat().st_mode) == 0o775


def test_second_synthetic_build_waits_for_the_first_and_reuses_it(tmp_path, marks):
    """A child holds the root's lock while it renders; our build waits, then reuses its copy."""
    root = tmp_path / "nyu"
    child = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from clipdepth._files import file_lock
        from clipdepth.data.synthetic import write_synthetic_dataset, ensure_synthetic_dataset

        root, marks = Path({str(root)!r}), Path({str(marks)!r})
        with file_lock(root.parent / f".{{root.name}}"):  # the lock ensure_synthetic_dataset takes
            (marks / "locked").touch()
            while not (marks / "release").exists():
                time.sleep(0.05)
            write_synthetic_dataset("indoor", root, 1, 1, seed=0, size=(32, 32))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", child], env=env)
    import threading

    result: list[Path] = []
    try:
        _wait_for((marks, "locked"))
        thread = threading.Thread(
            target=lambda: result.append(ensure_synthetic_dataset("indoor", root, 1, 1, seed=0, size=(32, 32))))
        thread.start()
        thread.join(1.5)
        assert thread.is_alive(), "the second build must wait for the first one's lock"
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "and must not render meanwhile"
        (marks / "release").touch()
        assert proc.wait(timeout=120) == 0
        inode = root.stat().st_ino
        thread.join(120)
    finally:
        (marks / "release").touch()
        proc.wait(timeout=120)
    assert result == [root] and root.stat().st_ino == inode, "the first process's copy is reused as is"
