"""Run units of work (lockstep row groups) in local processes, as submitit jobs, or on a Slurm cluster.

Why this module: a full study is tens of GPU-hours, and the unit of scheduled work -- a group of rows
that share one data stream -- is a pure function of its configuration that writes its results
atomically into the shared runs folder (DESIGN.md section 5). Such a unit can run anywhere that sees
that folder, so where it runs is a choice made here, once, and not in the trainer:

* ``local``: ``jobs`` worker processes on this machine (``concurrent.futures`` with the *spawn*
  context, so that a worker starts clean and its ``CUDA_VISIBLE_DEVICES`` is set before torch loads);
  with ``gpus`` the workers take the GPUs round robin. One log per unit and run in ``logs/local/``.
* ``submitit-local``: the same, but every unit is a real submitit job (:class:`submitit.LocalExecutor`)
  with submitit's pickles, logs and requeue machinery: what a Slurm run does, on one machine, without
  Slurm. For testing the cluster path and for running detached jobs on a workstation.
* ``slurm``: :class:`submitit.AutoExecutor` with ``cluster="slurm"``, all units submitted as one job
  array; Slurm decides when and where they run (``slurm_array_parallelism`` caps how many at once).

submitit is the scheduler; this module only chooses what to submit and reports what happened. A
rerun submits only what is missing: units whose :meth:`WorkUnit.is_done` is true are skipped. Every
submitted unit is wrapped in :class:`SubmittedUnit`, a :class:`submitit.helpers.Checkpointable`, so a
preempted or timed-out Slurm job is requeued with the same unit, which resumes from its own checkpoint.

The options (:class:`ExecutorOptions`, the ``--executor``/``--slurm-*``/``-x`` arguments and their
checks) live in :mod:`clipdepth.run._executor_options`, what runs inside a worker or job (:class:`WorkUnit`,
:class:`SubmittedUnit`) in :mod:`clipdepth.run._worker`; both are re-exported here.

Long because: the three executors share the outcome records, the progress lines and the report, and
each one's submit-wait-report loop is short; the options and the worker side are already apart.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import submitit

from clipdepth._files import atomic_write_json
from clipdepth.run._executor_options import (
    DEFAULT_SLURM_TIME_MIN,
    EXECUTORS,
    LOCAL_PARAMETERS,
    ExecutorError,
    ExecutorOptions,
    SlurmOptions,
    add_executor_arguments,
    check_slurm_available,
    options_from_args,
    parse_extra,
    parse_minutes,
    slurm_parameter_name,
)
from clipdepth.run._worker import Refused, SubmittedUnit, WorkUnit, pin_gpu, run_logged

__all__ = [
    "DEFAULT_SLURM_TIME_MIN",
    "EXECUTORS",
    "LOCAL_PARAMETERS",
    "ExecutionReport",
    "ExecutorError",
    "ExecutorOptions",
    "SlurmOptions",
    "SubmittedUnit",
    "UnitOutcome",
    "WorkUnit",
    "add_executor_arguments",
    "check_slurm_available",
    "options_from_args",
    "parse_extra",
    "parse_minutes",
    "run_units",
]

#: submitit's LocalExecutor stops a job after ``timeout_min`` (default 2 minutes!); ours run for days.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
_ERROR_LINES = 6


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class UnitOutcome:
    """What happened to one unit: ``skipped`` (already done), ``ok`` or ``failed``."""

    key: str
    label: str
    status: str
    job_id: str = ""
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    seconds: float = 0.0
    result: Any = None
    refused: bool = False  #: stopped on the project's own error (bad data, checkpoint...): ``error`` is its line


@dataclass
class ExecutionReport:
    """All units of one :func:`run_units` call; ``ok`` is false when any failed."""

    executor: str
    outcomes: list[UnitOutcome]

    def _with(self, status: str) -> list[UnitOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def skipped(self) -> list[UnitOutcome]:
        return self._with("skipped")

    @property
    def finished(self) -> list[UnitOutcome]:
        return self._with("ok")

    @property
    def failed(self) -> list[UnitOutcome]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        """Everything but the units' return values (which need not be JSON)."""
        return {"executor": self.executor,
                "units": [{k: v for k, v in dataclasses.asdict(o).items() if k != "result"} for o in self.outcomes]}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def scoped_environ(name: str, value: str | None) -> Iterator[None]:
    """Set ``$name`` to ``value`` for the block (``None``: leave it as it is), then restore what was there
    (unset if it was unset): worker processes started inside the block inherit it."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _file_name(key: str) -> str:
    """A unit key as a file name (keys may hold '/' or spaces)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", key).strip("._") or "unit"


def _tail(text: str, lines: int = _ERROR_LINES) -> str:
    kept = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def _import_roots(objects: Sequence[object]) -> list[str]:
    """Folders a fresh interpreter needs on ``sys.path`` to unpickle ``objects`` (and this package).

    submitit's jobs start a new interpreter (``python -m submitit.core._submit``) that unpickles the
    callable, importing the modules its classes come from; when those were found through a path that
    is not in the environment (an uninstalled checkout, a test folder), the job would fail to import
    them. Jobs inherit the submitting environment (Slurm's default ``--export=ALL``), so the folders
    are put on ``PYTHONPATH`` while submitting.
    """
    roots: list[str] = []
    for obj in [*objects, SubmittedUnit]:
        cls = obj if isinstance(obj, type) else type(obj)
        module = sys.modules.get(cls.__module__.partition(".")[0])
        path = getattr(module, "__file__", None)
        if not path or cls.__module__ == "__main__":
            continue  # cloudpickle sends classes of __main__ by value
        path = Path(path).resolve()
        roots.append(str(path.parent.parent if path.name == "__init__.py" else path.parent))
    return list(dict.fromkeys(roots))


def _pythonpath(roots: Sequence[str]) -> contextlib.AbstractContextManager[None]:
    old = os.environ.get("PYTHONPATH")
    parts = [*roots, *(old.split(os.pathsep) if old else [])]
    return scoped_environ("PYTHONPATH", os.pathsep.join(dict.fromkeys(p for p in parts if p)))


class _Progress:
    """One line whenever the counts of pending / running / done / failed jobs change."""

    def __init__(self, out: IO[str], executor: str) -> None:
        self.out, self.executor, self.last = out, executor, None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def counts(self, pending: int, running: int, done: int, failed: int) -> None:
        now = (pending, running, done, failed)
        if now != self.last:
            self.last = now
            self.say(f"{self.executor}: jobs {pending} pending, {running} running, {done} done, {failed} failed")

    def finished(self, outcome: UnitOutcome) -> None:
        if outcome.status == "ok":
            self.say(f"  [ok] {outcome.label}: job {outcome.job_id} ({outcome.seconds:.0f} s)")
            return
        if outcome.refused:
            self.say(f"  [FAILED] {outcome.label}: {outcome.error} (log {outcome.stdout})")
            return
        logs = outcome.stdout if outcome.stderr in ("", outcome.stdout) else f"{outcome.stdout}\n      {outcome.stderr}"
        error = "\n".join("      " + ln for ln in outcome.error.splitlines())
        self.say(f"  [FAILED] {outcome.label} (unit {outcome.key}): job {outcome.job_id}\n    logs:\n      {logs}\n"
                 f"    error:\n{error}")


# ---------------------------------------------------------------------------------------------
# local: worker processes
# ---------------------------------------------------------------------------------------------


def _log_pid(log: Path) -> str:
    """The process named on the first line of a unit's log (the log is new for each run)."""
    found = re.search(r", pid (\d+)", _read(log).split("\n", 1)[0])
    return f"pid {found.group(1)}" if found else "(not started)"


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes are spawned: they inherit the disposition, so Ctrl-C reaches
    only this process, which stops them (:func:`_stop_workers`) instead of each printing a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_workers(pool: futures.ProcessPoolExecutor, processes: Sequence[Any]) -> None:
    """Cancel what has not started and stop the workers: SIGTERM (the running units stop, see
    :func:`clipdepth.run._worker.pin_gpu`), SIGKILL for one still alive after 10 s. Their units resume
    from their last checkpoints on the next run."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=True)


def _run_local(todo: list[WorkUnit], logs_dir: Path, jobs: int, gpus: Sequence[str] | None,
               progress: _Progress) -> list[UnitOutcome]:
    """A :class:`concurrent.futures.ProcessPoolExecutor` of ``jobs`` spawned workers, GPUs round robin per worker.

    A worker that dies (killed, out of memory) breaks the pool: the units running then are reported
    failed, the units that had not started go to a fresh pool, so the other groups still run. Ctrl-C
    (SIGINT to the process group, or to this process alone) stops the workers (:func:`_stop_workers`).
    A ``kill -9`` of this process alone cannot: its workers finish their current units, whose results are
    written atomically and reused by the next run (which waits on a unit's lock, not on its worker).
    """
    log_dir = logs_dir / "local"
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = {u.key: log_dir / f"{_file_name(u.key)}.log" for u in todo}
    for log in logs.values():  # one log per unit and run: its first line names the process running it now
        log.unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")
    outcomes: dict[str, UnitOutcome] = {}
    queue = list(todo)

    def counts() -> None:
        done = sum(o.status == "ok" for o in outcomes.values())
        failed = len(outcomes) - done
        running = min(jobs, len(todo) - len(outcomes))
        progress.counts(len(todo) - len(outcomes) - running, running, done, failed)

    while queue:
        before, before_children = len(outcomes), set(multiprocessing.active_children())
        counter = context.Value("i", 0)  # workers started: the n-th takes GPU n (round robin)
        pool = futures.ProcessPoolExecutor(min(jobs, len(queue)), mp_context=context, initializer=pin_gpu,
                                           initargs=(counter, tuple(gpus or ())))
        with _sigint_ignored():
            started = {pool.submit(run_logged, u, str(logs[u.key])): (u, time.perf_counter()) for u in queue}
        workers = [p for p in multiprocessing.active_children() if p not in before_children]
        queue = []
        try:
            counts()
            for fut in futures.as_completed(started):
                unit, t0 = started[fut]
                log = logs[unit.key]
                outcome = UnitOutcome(unit.key, unit.label, "ok", _log_pid(log), str(log), str(log),
                                      seconds=time.perf_counter() - t0)
                try:
                    status, payload, pid = fut.result()
                except futures.process.BrokenProcessPool:
                    if not log.is_file():  # had not started: the next pool runs it
                        queue.append(unit)
                        continue
                    outcome.status = "failed"
                    outcome.error = ("the worker process died (killed, or out of memory) while running this unit, "
                                     "or another worker died and the pool stopped this one; last lines of its log:\n"
                                     f"{_tail(_read(log), 4)}").rstrip()
                else:
                    outcome.job_id = f"pid {pid}"
                    if status == "ok":
                        outcome.result = payload
                        _check_done(unit, outcome)
                    else:
                        outcome.status, outcome.error = "failed", (payload if status == "refused" else _tail(payload))
                        outcome.refused = status == "refused"
                outcomes[unit.key] = outcome
                progress.finished(outcome)
                counts()
        except BaseException:  # Ctrl-C: stop the workers; a rerun resumes every unit from its checkpoint
            _stop_workers(pool, workers)
            # the traceback keeps this frame: drop what holds the counter's semaphore, so it is released now
            # (else the resource tracker warns of a leaked semaphore at exit)
            pool = counter = workers = None  # type: ignore[assignment]
            raise
        pool.shutdown(wait=True)
        if len(outcomes) == before:  # nothing started in that pool: do not try forever
            for unit in queue:
                outcomes[unit.key] = UnitOutcome(unit.key, unit.label, "failed", "(not started)", error=(
                    "the worker processes died before starting this unit"))
                progress.finished(outcomes[unit.key])
            queue = []
    return [outcomes[u.key] for u in todo]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _check_done(unit: WorkUnit, outcome: UnitOutcome) -> None:
    """A unit that returned without its results is a failure (a bug in the unit, or a lost write)."""
    if not unit.is_done():
        outcome.status = "failed"
        outcome.error = "the unit returned, but is_done() is still false: its results are not in the runs folder"


# ---------------------------------------------------------------------------------------------
# submitit: LocalExecutor and Slurm
# ---------------------------------------------------------------------------------------------


def _make_executor(options: ExecutorOptions, folder: Path) -> submitit.Executor:
    """The submitit executor with every parameter set; submitit's own complaints become one line."""
    try:
        if options.executor == "submitit-local":
            executor: submitit.Executor = submitit.LocalExecutor(folder=folder)
            executor.update_parameters(**{"timeout_min": LOCAL_TIMEOUT_MIN, **options.extra})
            return executor
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"name": "clipdepth", "timeout_min": options.slurm.time_min,
                                  "gpus_per_node": options.slurm.gpus_per_job, "nodes": 1, "tasks_per_node": 1}
        if options.slurm.partition:
            params["slurm_partition"] = options.slurm.partition
        if options.slurm.array_parallelism:
            params["slurm_array_parallelism"] = options.slurm.array_parallelism
        params.update({slurm_parameter_name(k): v for k, v in options.extra.items()})
        executor.update_parameters(**params)
        return executor
    except (AssertionError, NameError, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExecutorError(f"submitit rejected the {options.executor} parameters: {first}") from None


def _job_error(job: submitit.Job, slurm: bool) -> str:
    """Last lines of a failed job's exception, or why it left no result."""
    if slurm or job.paths.result_pickle.exists():
        exc = job.exception()  # on Slurm this waits a little for a result written on another node
        if exc is None:
            return ""
        text = str(exc)
        parts = text.split("----------------------")
        return _tail(parts[1] if len(parts) >= 3 else text)
    stderr = _tail(_read(job.paths.stderr), 4)
    return (f"the job ended without a result (state {job.state}): its process was killed or crashed"
            + (f"; last lines of its stderr:\n{stderr}" if stderr else ""))


def _job_outcome(job: submitit.Job, unit: WorkUnit, slurm: bool, t0: float) -> UnitOutcome:
    outcome = UnitOutcome(unit.key, unit.label, "ok", str(job.job_id), str(job.paths.stdout), str(job.paths.stderr),
                          seconds=time.perf_counter() - t0)
    error = _job_error(job, slurm)
    if error:
        outcome.status, outcome.error = "failed", error
    elif isinstance(result := job.result(), Refused):
        outcome.status, outcome.error, outcome.refused = "failed", result.message, True
    else:
        outcome.result = result
        _check_done(unit, outcome)
    return outcome


_RUNNING_STATES = ("RUNNING", "COMPLETING")


def _submit(executor: str, submit: Callable[..., Any], *args: Any) -> Any:
    """``submit(*args)``; a refused submission (sbatch's error: bad partition, account...) becomes one line."""
    try:
        return submit(*args)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as exc:
        last = _tail(str(exc), 1) or type(exc).__name__
        raise ExecutorError(f"{executor}: the submission was refused: {last}") from None


def _run_submitit(todo: list[WorkUnit], logs_dir: Path, options: ExecutorOptions, gpus: Sequence[str] | None,
                  poll_s: float, progress: _Progress) -> list[UnitOutcome]:
    """Submit ``todo`` (Slurm: one job array; LocalExecutor: ``jobs`` at a time, GPUs round robin) and wait."""
    slurm = options.executor == "slurm"
    executor = _make_executor(options, logs_dir / "submitit" / "%j")
    if gpus and not slurm:
        try:
            gpu_ids = [int(g) for g in gpus]
        except ValueError:
            raise ExecutorError(f"--executor submitit-local needs numeric GPU ids, got {list(gpus)}") from None
    queue = deque(todo)
    running: dict[str, tuple[submitit.Job, WorkUnit, int, float]] = {}
    outcomes: dict[str, UnitOutcome] = {}
    slots = len(todo) if slurm else min(options.jobs, len(todo))
    try:
        with _pythonpath(_import_roots(todo)):
            if slurm:
                jobs = _submit(options.executor, executor.submit_array, [SubmittedUnit(u) for u in todo])
                t0 = time.perf_counter()
                running = {u.key: (job, u, 0, t0) for u, job in zip(todo, jobs, strict=True)}
                queue.clear()
                progress.say(f"slurm: submitted {len(jobs)} job(s) as array {jobs[0].job_id.split('_')[0]}; "
                             f"logs in {logs_dir / 'submitit'}")
            while queue or running:
                busy = {slot for _, _, slot, _ in running.values()}
                for slot in (s for s in range(slots) if s not in busy):
                    if not queue:
                        break
                    unit = queue.popleft()
                    if gpus and not slurm:
                        executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu_ids[slot % len(gpu_ids)]])
                    job = _submit(options.executor, executor.submit, SubmittedUnit(unit))
                    running[unit.key] = (job, unit, slot, time.perf_counter())
                    progress.say(f"  submitted {unit.label}: job {job.job_id}, log {job.paths.stdout}")
                pending = len(queue)
                active = 0
                for key, (job, unit, _, t0) in list(running.items()):
                    if job.done():
                        del running[key]
                        outcomes[key] = _job_outcome(job, unit, slurm, t0)
                        progress.finished(outcomes[key])
                    elif job.state.upper() in _RUNNING_STATES:
                        active += 1
                    else:
                        pending += 1
                progress.counts(pending, active, sum(o.status == "ok" for o in outcomes.values()),
                                sum(o.status == "failed" for o in outcomes.values()))
                if queue or running:
                    time.sleep(poll_s)
    except KeyboardInterrupt:
        if slurm:
            ids = " ".join(sorted({job.job_id.split("_")[0] for job, *_ in running.values()}))
            progress.say(f"slurm: interrupted; the submitted jobs keep running (cancel them with `scancel {ids}`); "
                         "a rerun reuses whatever they finish")
        else:
            for job, *_ in running.values():
                job.cancel()
        raise
    return [outcomes[u.key] for u in todo]


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def run_units(units: Sequence[WorkUnit], logs_dir: str | os.PathLike[str], options: ExecutorOptions | None = None,
              *, gpus: Sequence[str] | None = None, poll_s: float | None = None,
              out: IO[str] | None = None) -> ExecutionReport:
    """Run every unit that is not done yet through ``options.executor``; wait; report.

    ``logs_dir``: ``local/<key>.log`` per unit, ``submitit/<job id>/`` per submitit job (submitit's
    pickles and ``*_log.out``/``*_log.err``), and ``executor-report.json`` (the report, written at
    the end). For Slurm it must be on a filesystem that the compute nodes see, like the runs folder.
    ``gpus``: device ids for ``local`` and ``submitit-local``; the ``jobs`` workers (local) or job slots
    (submitit-local) take them round robin (``CUDA_VISIBLE_DEVICES`` of each worker/job); ``None`` or
    empty: no GPU for submitit-local jobs, inherited visibility for local workers. Slurm jobs get what Slurm allocates.

    ``poll_s``: how often submitit jobs are polled (local workers report back by themselves).

    Units whose ``is_done()`` is true are not run (status ``skipped``). A failed unit does not stop
    the others; finished units stay finished, and a rerun submits only what is missing.
    """
    options = options or ExecutorOptions()
    options.check()
    out = out or sys.stdout
    logs_dir = Path(logs_dir).resolve()
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ExecutorError(f"units must have distinct keys; repeated: {', '.join(duplicates)}")
    progress = _Progress(out, options.executor)
    outcomes: dict[str, UnitOutcome] = {}
    todo: list[WorkUnit] = []
    for unit in units:
        if unit.is_done():
            outcomes[unit.key] = UnitOutcome(unit.key, unit.label, "skipped")
        else:
            todo.append(unit)
    progress.say(f"{options.executor}: {len(todo)} unit(s) to run, {len(units) - len(todo)} already done")
    if todo:
        logs_dir.mkdir(parents=True, exist_ok=True)
        if options.executor == "local":
            ran = _run_local(todo, logs_dir, options.jobs, gpus, progress)
        else:
            default_poll = 10.0 if options.executor == "slurm" else 0.5
            ran = _run_submitit(todo, logs_dir, options, gpus, default_poll if poll_s is None else poll_s, progress)
        outcomes.update((o.key, o) for o in ran)
    report = ExecutionReport(options.executor, [outcomes[k] for k in keys])
    if todo:
        atomic_write_json(logs_dir / "executor-report.json", report.to_json())
    if report.failed:
        progress.say(f"{options.executor}: {len(report.failed)} of {len(units)} unit(s) failed: "
                     + ", ".join(f"{o.key} (job {o.job_id})" for o in report.failed)
                     + "; finished units are kept, a rerun runs only what is missing")
    return report
