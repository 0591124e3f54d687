"""What runs inside a worker: the :class:`WorkUnit` protocol and the two ways a unit is called there.

Why a module of its own: this is the code that executes in the *child* -- a spawned local worker
process (:func:`pin_gpu` before torch loads, then :func:`run_logged`) or a submitit job
(:class:`SubmittedUnit`, requeue-safe) -- while :mod:`clipdepth.run.executors` is the parent's side that
decides what to submit, waits and reports. The child imports only this small module and the unit's own.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from submitit.helpers import Checkpointable, DelayedSubmission

__all__ = ["Refused", "SubmittedUnit", "WorkUnit", "expected_error", "pin_gpu", "run_logged"]

#: The package whose own error classes (DataError, CheckpointError, ParameterError, ScoreError, ...) are
#: raised on purpose, with a one-line message made for the user.
_PROJECT = __name__.partition(".")[0]


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


@dataclass(frozen=True)
class Refused:
    """What a unit returns instead of a traceback when it stopped on an error the project raises on
    purpose (bad data, a bad checkpoint, a bad parameter): that error's one line, which the parent prints
    as it is, whichever executor ran the unit. The full traceback stays in the unit's log."""

    message: str


def expected_error(exc: BaseException) -> str | None:
    """The one-line message of ``exc`` if it is one of the project's own error classes, else None.

    Decided by where the class is defined (any class of its MRO in this package), so the worker need
    not import the data, checkpoint or parameter modules to recognise their errors.
    """
    if not any(cls.__module__.partition(".")[0] == _PROJECT for cls in type(exc).__mro__):
        return None
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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
        try:
            return self.unit()
        except Exception as exc:
            message = expected_error(exc)
            if message is None:
                raise
            traceback.print_exc()
            return Refused(message)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        print(f"[clipdepth] unit {self.unit.key}: preempted or near its time limit; requeued with the same unit, "
              "which resumes from its last checkpoint", flush=True)
        return DelayedSubmission(SubmittedUnit(self.unit))


def pin_gpu(counter: Any, gpus: tuple[str, ...]) -> None:
    """Worker initializer: the n-th worker started takes ``gpus[n % len(gpus)]`` (round robin per worker),
    before the unit imports torch, so the worker sees only its GPU. ``counter`` is a shared
    ``multiprocessing.Value`` counting the workers started; with no ``gpus`` the visibility is inherited.

    Workers are started with SIGINT ignored (see :func:`clipdepth.run.executors._run_local`): on Ctrl-C the
    parent stops them with SIGTERM, which here raises ``SystemExit`` in the running unit, so the worker
    ends like a finished one (its semaphores, e.g. tqdm's lock, released; no traceback of its own) and the
    unit resumes from its last checkpoint on the next run.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_logged(unit: WorkUnit, log: str) -> tuple[str, Any, int]:
    """In a worker: run ``unit`` with stdout/stderr (also of C code) written to ``log`` (new for each
    run, so its first line names the process running it now). Returns ``(status, payload, pid)``:
    ``("ok", result)``, ``("refused", one line)`` for the project's own errors, ``("error", traceback)``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            print(f"[clipdepth] unit {unit.key} ({unit.label}) on {socket.gethostname()}, pid {os.getpid()}, "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
            try:
                return "ok", unit(), os.getpid()
            except Exception as exc:
                text = traceback.format_exc()
                print(text, file=sys.stderr, flush=True)
                message = expected_error(exc)
                return ("error", text, os.getpid()) if message is None else ("refused", message, os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
