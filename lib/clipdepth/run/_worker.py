"""What runs inside a worker: the :class:`WorkUnit` protocol and the two ways a unit is called there.

Why a module of its own: this is the code that executes in the *child* -- a spawned local worker
process (:func:`pin_gpu` before torch loads, then :func:`run_logged`) or a submitit job
(:class:`SubmittedUnit`, requeue-safe) -- while :mod:`clipdepth.run.executors` is the parent's side that
decides what to submit, waits and reports. The child imports only this small module and the unit's own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import traceback
from typing import Any, Protocol, runtime_checkable

from submitit.helpers import Checkpointable, DelayedSubmission

__all__ = ["SubmittedUnit", "WorkUnit", "pin_gpu", "run_logged"]


@runtime_checkable
class WorkUnit(Protocol):
    """What the executors run: picklable, a pure function of its configuration.

    ``__call__`` does the work, writes every result atomically into the shared runs folder, resumes
    from its own checkpoints and is idempotent (calling it again after it finished changes nothing),
    so it may be killed at any moment and started again, here or on another node.
    """

    key: str  #: stable id (e.g. the stream key prefix); names the unit's log files
    label: str  #: human text for progress lines

    def is_done(self) -> bool:
        """True when all its results exist in the shared runs folder (then it is not submitted)."""
        ...

    def __call__(self) -> Any: ...


class SubmittedUnit(Checkpointable):
    """A unit as a submitit job: requeue-safe.

    When Slurm preempts the job, or its time limit comes near, submitit calls :meth:`checkpoint` and
    requeues the job with the submission it returns: the same unit, unchanged. Nothing of the unit's
    progress is pickled here; resumption is the unit's own per-epoch checkpoint in the runs folder,
    which the requeued call finds and continues from (so the result is the same as an uninterrupted
    run). A job killed without warning (node failure, ``kill -9``) is simply submitted again by the
    next run, which resumes the same way.
    """

    def __init__(self, unit: WorkUnit) -> None:
        self.unit = unit

    def __call__(self) -> Any:
        print(f"[clipdepth] unit {self.unit.key} ({self.unit.label}) on {socket.gethostname()}, pid {os.getpid()}",
              flush=True)
        return self.unit()

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        print(f"[clipdepth] unit {self.unit.key}: preempted or near its time limit; requeued with the same unit, "
              "which resumes from its last checkpoint", flush=True)
        return DelayedSubmission(SubmittedUnit(self.unit))


def pin_gpu(gpu: str | None) -> None:
    """Worker initializer: runs before the unit imports torch, so the worker sees only its GPU. On Linux
    the worker also asks to be terminated when its parent dies (``PR_SET_PDEATHSIG``): a killed
    ``./run_all.sh`` must not leave a worker training on; the next run resumes from the group checkpoint."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def run_logged(unit: WorkUnit, log: str) -> tuple[str, Any]:
    """In a worker: run ``unit`` with stdout/stderr (also of C code) appended to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            print(f"[clipdepth] unit {unit.key} ({unit.label}) on {socket.gethostname()}, pid {os.getpid()}, "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
            try:
                return "ok", unit()
            except Exception:
                text = traceback.format_exc()
                print(text, file=sys.stderr, flush=True)
                return "error", text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

