"""The executor options: what ``--executor``, ``--slurm-*`` and ``-x`` mean, and whether this machine can use them.

Why a module of its own: the options are the command line's side of the executors (``./run_all.sh``
and ``clipdepth train`` parse and check them before any work starts), while :mod:`clipdepth.run.executors`
runs units. Checking is cheap and local -- ``sbatch``/``srun`` on PATH, ``-x`` names against
submitit's parameter lists -- so a bad command fails in one line before anything is submitted.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import submitit

__all__ = [
    "AUTO_GENERIC",
    "DEFAULT_SLURM_TIME_MIN",
    "EXECUTORS",
    "LOCAL_PARAMETERS",
    "ExecutorError",
    "ExecutorOptions",
    "SlurmOptions",
    "add_executor_arguments",
    "check_slurm_available",
    "options_from_args",
    "parse_extra",
    "parse_minutes",
    "slurm_parameter_name",
]

EXECUTORS = ("local", "submitit-local", "slurm")
#: Slurm time limit when none is given: a day. A group that needs longer is requeued at the limit and
#: resumes from its checkpoint (up to submitit's ``max_num_timeout`` = 3 times).
DEFAULT_SLURM_TIME_MIN = 24 * 60
#: Parameters of submitit's LocalExecutor that ``-x`` may set (its ``update_parameters`` ignores others).
LOCAL_PARAMETERS = frozenset({"timeout_min", "gpus_per_node", "visible_gpus", "tasks_per_node", "nodes",
                              "signal_delay_s", "stderr_to_stdout", "setup"})


class ExecutorError(ValueError):
    """Bad executor options, or an executor that this machine cannot use (one line, says which)."""



@dataclass(frozen=True)
class SlurmOptions:
    """What each Slurm job asks for; anything else goes through ``ExecutorOptions.extra`` (``-x``)."""

    partition: str | None = None
    gpus_per_job: int = 1
    time_min: int = DEFAULT_SLURM_TIME_MIN
    array_parallelism: int | None = None


@dataclass(frozen=True)
class ExecutorOptions:
    """Where and how :func:`run_units` runs units; built by :func:`options_from_args` for the CLI.

    ``jobs``: units run at the same time by ``local`` and ``submitit-local`` (Slurm uses
    ``slurm.array_parallelism`` instead). ``extra``: more submitit parameters (``-x KEY=VALUE``),
    passed to ``update_parameters`` of the submitit executors.
    """

    executor: str = "local"
    jobs: int = 1
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`ExecutorError` (one line) unless these options can run on this machine.

        Cheap and local: for ``slurm`` it only looks for ``sbatch``/``srun`` on PATH and checks the
        ``-x`` names against submitit's parameter lists, so a bad command fails before anything runs.
        """
        if self.executor not in EXECUTORS:
            raise ExecutorError(f"--executor: unknown executor {self.executor!r}; valid: {', '.join(EXECUTORS)}")
        if self.jobs < 1:
            raise ExecutorError(f"--jobs must be >= 1, got {self.jobs}")
        if self.executor == "slurm":
            check_slurm_available()
            if self.slurm.gpus_per_job < 0:
                raise ExecutorError(f"--slurm-gpus-per-job must be >= 0, got {self.slurm.gpus_per_job}")
            if self.slurm.time_min < 1:
                raise ExecutorError(f"--slurm-time must be at least one minute, got {self.slurm.time_min} min")
            if self.slurm.array_parallelism is not None and self.slurm.array_parallelism < 1:
                raise ExecutorError(f"--slurm-array-parallelism must be >= 1, got {self.slurm.array_parallelism}")
        elif self.slurm != SlurmOptions():
            raise ExecutorError(f"--slurm-* options apply to --executor slurm only (executor is {self.executor})")
        if self.extra and self.executor == "local":
            raise ExecutorError("-x applies to the submitit executors only (--executor submitit-local or slurm)")
        for key in self.extra:
            if self.executor == "submitit-local" and key not in LOCAL_PARAMETERS:
                raise ExecutorError(f"-x {key}: not a parameter of submitit's LocalExecutor; valid: "
                                    f"{', '.join(sorted(LOCAL_PARAMETERS))}")
            if self.executor == "slurm":
                name = slurm_parameter_name(key)
                valid = submitit.SlurmExecutor._valid_parameters()
                if name not in AUTO_GENERIC and name.removeprefix("slurm_") not in valid:
                    raise ExecutorError(f"-x {key}: not a submitit Slurm parameter; valid: "
                                        f"{', '.join(sorted(AUTO_GENERIC | valid))}")


#: AutoExecutor's cluster-independent parameters (timeout_min, mem_gb, gpus_per_node, cpus_per_task...).
AUTO_GENERIC = frozenset(submitit.AutoExecutor._valid_parameters())


def slurm_parameter_name(key: str) -> str:
    """AutoExecutor's name for a ``-x`` key: generic names as they are, others prefixed ``slurm_``."""
    return key if key in AUTO_GENERIC or key.startswith("slurm_") else f"slurm_{key}"


def check_slurm_available() -> None:
    """Raise :class:`ExecutorError` unless this machine can submit Slurm jobs (``sbatch``, ``srun``)."""
    missing = [exe for exe in ("sbatch", "srun") if shutil.which(exe) is None]
    if missing:
        raise ExecutorError(
            f"--executor slurm: {' and '.join(missing)} not found on PATH, so this machine cannot submit "
            "Slurm jobs; run on a login node of the cluster, or use --executor local / submitit-local")


def parse_minutes(text: str) -> int:
    """A Slurm time limit as whole minutes: ``90``, ``HH:MM:SS``, ``MM:SS`` or ``D-HH:MM:SS`` (rounded up)."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"invalid time {text!r}: expected minutes or HH:MM:SS")
    days, first, second, third = match.groups()
    if second is None:
        if days is not None:  # D-HH
            return int(days) * 1440 + int(first) * 60
        return int(first)
    if third is None:  # MM:SS, or D-HH:MM
        seconds = int(first) * 3600 + int(second) * 60 if days is not None else int(first) * 60 + int(second)
    else:
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    seconds += int(days or 0) * 86400
    return max(1, math.ceil(seconds / 60))


def parse_extra(items: Sequence[str]) -> dict[str, Any]:
    """``-x KEY=VALUE`` items as a dict; values are Python literals (``32``, ``True``, ``['a']``) or strings."""
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ExecutorError(f"-x {item!r}: expected KEY=VALUE with a parameter name as KEY")
        try:
            extra[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            extra[key] = raw
    return extra


def _minutes_arg(text: str) -> int:
    try:
        return parse_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--executor``, ``--slurm-*`` and ``-x`` to a parser that already has ``--jobs``."""
    group = parser.add_argument_group("where row groups run")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: --jobs worker processes on this machine (default); submitit-local: each "
                            "group as a submitit job on this machine; slurm: a Slurm job array via submitit")
    group.add_argument("--slurm-partition", default=None, metavar="NAME", help="Slurm partition")
    group.add_argument("--slurm-gpus-per-job", type=int, default=None, metavar="N",
                       help="GPUs per Slurm job (default 1; 0 for CPU-only jobs)")
    group.add_argument("--slurm-time", type=_minutes_arg, default=None, metavar="TIME",
                       help=f"time limit per job, minutes or HH:MM:SS (default {DEFAULT_SLURM_TIME_MIN // 60}:00:00); "
                            "a job reaching it is requeued and resumes from its checkpoint")
    group.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N",
                       help="at most N jobs of the array run at once (default: Slurm's/submitit's limit)")
    group.add_argument("-x", dest="executor_params", action="append", default=[], metavar="KEY=VALUE",
                       help="any other submitit parameter, e.g. -x mem_gb=64 -x account=proj -x "
                            "cpus_per_task=8 (repeatable)")


def options_from_args(args: argparse.Namespace) -> ExecutorOptions:
    """The :class:`ExecutorOptions` of parsed arguments, checked (:meth:`ExecutorOptions.check`).

    Call it first: ``--executor slurm`` on a machine without Slurm fails here, before anything runs.
    """
    given = {"partition": args.slurm_partition, "gpus_per_job": args.slurm_gpus_per_job,
             "time_min": args.slurm_time, "array_parallelism": args.slurm_array_parallelism}
    slurm = dataclasses.replace(SlurmOptions(), **{k: v for k, v in given.items() if v is not None})
    options = ExecutorOptions(args.executor, args.jobs, slurm, parse_extra(args.executor_params))
    options.check()
    return options
