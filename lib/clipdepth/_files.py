"""Files: where the repository is (paths in parameters are relative to it), and safe writes into
folders that several processes share (unique temporaries, renames, locks).

Why one module: results, checkpoints, feature caches and report pages are all written into folders
that two ``./run_all.sh`` invocations, two notebooks or two Slurm jobs on a network filesystem may use
at the same time. Every writer therefore follows the same three rules, implemented here once:

1. write to a temporary name that no other process can choose (host, pid and a random suffix are in
   the name), then ``os.replace`` it onto the final name, so a reader never sees half a file;
2. hold an inter-process lock (:mod:`filelock`, which works on NFS/Lustre through ``fcntl``/``flock``
   where the filesystem supports it, and on every local filesystem) around "is it done? if not,
   compute it", so a second process waits for the first and then reuses its result;
3. temporaries left by processes that died (kill -9, node failure) are recognised by the pid in
   their name and removed by the next run on the same host, which says so.

Created files and folders get the user's normal umask (``tempfile`` would make them private), so a
cache shared by a group stays readable by the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

__all__ = [
    "LockTimeout",
    "repo_path",
    "repo_root",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "clean_stale_temporaries",
    "file_lock",
    "make_temp_dir",
    "output_dir_problem",
    "temp_path",
]

_TMP_MARK = ".tmp-"
_HOST = socket.gethostname().replace(".", "_").replace("-", "_") or "host"


class LockTimeout(RuntimeError):
    """Another process held a lock for longer than we were willing to wait."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_path(final: str | os.PathLike[str]) -> Path:
    """A temporary name beside ``final`` that no concurrent process can pick:
    ``.<name>.tmp-<host>-<pid>-<random>``."""
    final = Path(final)
    return final.parent / f".{final.name}{_TMP_MARK}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def make_temp_dir(final: str | os.PathLike[str]) -> Path:
    """Create (with the user's umask, not tempfile's 0700) a unique temporary folder beside ``final``."""
    path = temp_path(final)
    path.mkdir(mode=0o777, parents=False, exist_ok=False)
    return path


def atomic_write(final: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to produce a file at a unique temporary path, then rename it onto ``final``.

    The temporary is removed if ``write`` fails, so nothing half-written is ever left behind. The file
    ends up with the permissions ``open()`` would give it (the user's umask).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        write(tmp)
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()
    return final


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically (see :func:`atomic_write`)."""
    return atomic_write(final, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(final: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``final`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | os.PathLike[str], obj: Any, **dumps: Any) -> Path:
    """Serialise ``obj`` as JSON (indent 2 unless told otherwise) and write it atomically."""
    dumps.setdefault("indent", 2)
    return atomic_write_text(final, json.dumps(obj, **dumps))


@contextlib.contextmanager
def file_lock(target: str | os.PathLike[str], timeout: float = -1, what: str | None = None) -> Iterator[None]:
    """Hold the inter-process lock ``<target>.lock`` (a sibling file) for the ``with`` block.

    ``timeout`` < 0 waits for ever (a second run of the same row waits for the first, then reuses its
    result). On timeout, :class:`LockTimeout` names the lock file and what it protects.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    lock = FileLock(str(lock_path), timeout=timeout, mode=0o666 & ~_umask() | 0o600)
    try:
        lock.acquire()
    except Timeout as exc:
        raise LockTimeout(
            f"{lock_path}: still locked by another process after {timeout:g} s ({what or target.name})"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner(name: str) -> tuple[str, int] | None:
    """(host, pid) encoded in a temporary's name by :func:`temp_path`, or None for other names."""
    if _TMP_MARK not in name:
        return None
    tail = name.rsplit(_TMP_MARK, 1)[1]
    parts = tail.split("-")
    if len(parts) < 3 or not parts[-2].isdigit():
        return None
    return "-".join(parts[:-2]), int(parts[-2])


def clean_stale_temporaries(folder: str | os.PathLike[str], recursive: bool = False, quiet: bool = False) -> list[Path]:
    """Remove temporaries of dead processes of this host from ``folder``; return what was removed.

    Only names made by :func:`temp_path` are considered, and only those whose process is gone (same
    host, pid no longer running): a temporary another live process is writing is never touched, and
    one made on another host of a cluster is left to that host. Each removal is reported on stderr.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob(f"*{_TMP_MARK}*") if recursive else folder.glob(f"*{_TMP_MARK}*")
    for path in sorted(candidates):
        owner = _owner(path.name)
        if owner is None or owner[0] != _HOST or _pid_alive(owner[1]):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        if not quiet:
            print(f"removed {path}: left behind by process {owner[1]}, which is no longer running",
                  file=sys.stderr)
    return removed


_REPO_MARKERS = ("pyproject.toml", "notebooks")


def repo_root() -> Path:
    """The repository root: the nearest folder above the cwd holding ``pyproject.toml`` and ``notebooks/``.

    Why search from the cwd first: Jupyter, nbval and papermill (``--cwd notebooks``) start kernels in
    ``notebooks/``, a user may start one at the root; both must find the same ``data/`` and
    ``reports/``. The package location (an editable install lives in ``lib/``) is the fallback, the
    cwd the last resort.
    """
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if all((folder / marker).exists() for marker in _REPO_MARKERS):
            return folder
    package_parent = Path(__file__).resolve().parents[2]
    if all((package_parent / marker).exists() for marker in _REPO_MARKERS):
        return package_parent
    return here


def repo_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute; relative paths are taken relative to :func:`repo_root`, not the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def output_dir_problem(path: str | os.PathLike[str], option: str) -> str | None:
    """Why the folder ``path`` (given as ``option``) cannot receive outputs, or None: a file where the folder
    or one of its parents should be, or a folder this process may not write. Checked before any work and
    without creating anything (``--plan`` writes nothing), so results are never computed and then lost."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{option} {path}: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{option} {path}: {probe} is not writable"
    return None
