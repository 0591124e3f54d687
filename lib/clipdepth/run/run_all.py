"""``./run_all.sh``: run every table notebook headlessly, render it without code, write the reports index.

Usage (``run_all.sh`` only picks the interpreter and calls ``python -m clipdepth.run.run_all``)::

    ./run_all.sh [--profile demo|paper] [--only NAMES] [--jobs N] [--force] [-p NAME VALUE ...]
                 [--reports-dir DIR]

Why this is Python and not a shell loop over ``papermill``: papermill only *warns* about a misspelt
parameter and exits 0 (ecosystem.md 1.2), so every ``-p`` name is checked here against each
notebook's ``parameters`` cell, and every value against its declared type
(:data:`clipdepth.run.params.PARAMETERS`), before anything runs; the ``paper`` profile's prerequisites
(data roots, split lists, weights, every listed file decoded) are checked before any long work; and
a failing notebook must not stop the others.

Relative paths (``-p data_dir``, ``-p weights``, any ``*_dir``, ``--reports-dir``) are taken from
the directory ``./run_all.sh`` was called from (``$CLIPDEPTH_CALLER_CWD``, exported by the script
before it changes into the repository), resolved once here and passed to the notebooks as absolute
paths, so the checks and the kernels (which run in ``notebooks/``) see the same files. Parameters
left at their notebook defaults keep the notebooks' own rule (relative to the repository root).

Each notebook still runs through the papermill CLI (``-k python3 --cwd notebooks``), as a user would
run it.

Notebooks are discovered as ``notebooks/[0-9][0-9]_*.ipynb``, so new table notebooks join without
changes here. Outputs, under ``<reports-dir>/<profile>/`` (default ``reports/<profile>/``):
``<name>.ipynb`` (executed), ``<name>.html`` (no code), ``<name>/results.*`` and figures (written by
the notebook), ``logs/<name>.log``, ``run_all.json`` and ``index.html``.

Exit status: 0 all notebooks succeeded; 1 some failed (listed at the end); 2 bad arguments (unknown
parameter, a value its declaration does not allow, unknown notebook or profile); 3 the paper
profile's prerequisites are missing or unusable.

Long because: it is one command read top to bottom in the order it runs (notebook parameters,
paper-profile prerequisites, the parallel run, rendering, the index); the prerequisite checks are the
piece to move into their own module if it grows further.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as futures
import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdepth._files import LockTimeout, atomic_write_text, file_lock, output_dir_problem, repo_root
from clipdepth.report._notebooks import notebook_tables
from clipdepth.run._worker import expected_error
from clipdepth.run.executors import ExecutorError, add_executor_arguments, options_from_args, run_units
from clipdepth.run.params import PARAMETERS, ParameterError, check_parameter
from clipdepth.vocab import DATASETS, is_weights_file

__all__ = [
    "NOTEBOOK_GLOB",
    "NotebookParameterError",
    "caller_dir",
    "check_paper_prerequisites",
    "discover_notebooks",
    "find_cached_weights",
    "main",
    "notebook_parameters",
    "parameters_cell",
    "parse_value",
]

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

#: Parameters run_all sets itself, with the option that sets them.
RESERVED: dict[str, str] = {"profile": "--profile", "reports_dir": "--reports-dir"}

#: Environment for every notebook in the demo profile: nothing downloads, nothing opens a window,
#: no progress-bar spam in logs, stable hashing.
DEMO_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
#: The paper profile may download (weights via open_clip) but still runs headless.
PAPER_ENV: dict[str, str] = {"MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}




class NotebookParameterError(ValueError):
    """A notebook's ``parameters`` cell is missing, duplicated or not made of literal assignments."""


# ---------------------------------------------------------------------------------------------
# Notebooks and their parameters
# ---------------------------------------------------------------------------------------------


def caller_dir() -> Path:
    """The directory the user ran ``./run_all.sh`` from: relative paths on the command line mean that.

    ``run_all.sh`` exports it as ``$CLIPDEPTH_CALLER_CWD`` before changing into the repository; run as
    ``python -m clipdepth.run.run_all`` the cwd is the caller's directory already.
    """
    return Path(os.environ.get("CLIPDEPTH_CALLER_CWD") or os.getcwd()).resolve()


def discover_notebooks(notebooks_dir: str | os.PathLike[str]) -> list[Path]:
    """Table notebooks in reading order: ``NN_name.ipynb`` (checkpoints and other files ignored)."""
    return sorted(p for p in Path(notebooks_dir).glob(NOTEBOOK_GLOB) if p.is_file())


def parameters_cell(nb: Mapping[str, Any], path: str | os.PathLike[str] = "<notebook>") -> tuple[int, str]:
    """Index and source of the single code cell tagged ``parameters``; it must be the first code cell."""
    cells = nb.get("cells", [])
    tagged = [i for i, c in enumerate(cells) if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    if len(tagged) != 1:
        raise NotebookParameterError(f"{path}: expected exactly one cell tagged 'parameters', found {len(tagged)}")
    index = tagged[0]
    cell = cells[index]
    if cell.get("cell_type") != "code":
        raise NotebookParameterError(f"{path}: the 'parameters' cell is a {cell.get('cell_type')} cell, not code")
    first_code = next(i for i, c in enumerate(cells) if c.get("cell_type") == "code")
    if index != first_code:
        raise NotebookParameterError(f"{path}: the 'parameters' cell must be the first code cell")
    source = cell.get("source", "")
    return index, "".join(source) if isinstance(source, list) else source


def notebook_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Names and default values of a notebook's parameters, read without executing anything.

    Only ``name = <literal>`` (optionally annotated) statements are allowed: papermill injects
    overrides in a cell *after* this one, so anything derived here would silently keep its default
    value (ecosystem.md 1.2). Violations raise :class:`NotebookParameterError`.
    """
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    _, source = parameters_cell(nb, path)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookParameterError(f"{path}: parameters cell does not parse: {exc}") from None
    params: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            raise NotebookParameterError(
                f"{path}: line {node.lineno} of the parameters cell is not a `name = literal` assignment"
            )
        try:
            params[target] = ast.literal_eval(value)
        except ValueError:
            raise NotebookParameterError(
                f"{path}: parameter {target!r} is not a literal (line {node.lineno}); derive values in a later cell"
            ) from None
    return params


def parse_value(text: str) -> Any:
    """A ``-p`` value as Python: literals (``3``, ``1e-3``, ``True``, ``None``, ``["nyu"]``) or else a string.

    ``true``/``false``/``null`` are accepted too, since people type YAML/JSON spellings.
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return json.loads(text)
        except ValueError:
            return text


# ---------------------------------------------------------------------------------------------
# Paper-profile prerequisites
# ---------------------------------------------------------------------------------------------


@dataclass
class Missing:
    """One missing prerequisite and how to obtain it."""

    what: str
    how: str


_HOW_NYU = (
    "NYU Depth v2 in the BTS layout: <root>/sync/ (24,231 training frames, the BTS 'sync' archive, see "
    "https://github.com/cleinc/bts) and <root>/official_splits/test/ (654 frames: `clipdepth data download "
    "nyu-labeled --out DIR`, then `clipdepth data export-nyu --mat DIR/nyu_depth_v2_labeled.mat --splits "
    "DIR/splits.mat --out <root>`)"
)
_HOW_KITTI = (
    "KITTI raw drives (left camera) under <raw root> and the annotated depth under <depth root>: "
    "`clipdepth data download kitti-eigen-test --out <raw root>` fetches the Eigen test drives; training "
    "drives and data_depth_annotated.zip from https://www.cvlibs.net/datasets/kitti/"
)
_HOW_SPLITS = (
    "`clipdepth data download splits` (copies the BTS lists into ~/.cache/clipdepth/splits), or put the "
    "list into the dataset root"
)


#: Bad files listed one by one before the rest are summarised in one line.
SHOWN_BAD_FILES = 5
_HOW_BAD_FILE = "replace the file (extract or download it again), or remove its line from the split list"


def _check_dataset(dataset: str, data_dir: Path, decode: bool = True, workers: int | None = None,
                   subset: int | None = None, decoded: dict[str, int] | None = None) -> list[Missing]:
    """Roots, split lists and listed files of one dataset, as the paper profile resolves them
    (with ``subset``, only the first ``subset`` lines of each list: the files a rehearsal reads).

    With ``decode`` every listed image and depth map is decoded (in ``workers`` threads, with a
    progress bar on a terminal), so a corrupt, truncated, 8-bit or all-zero file is reported by path
    now rather than when evaluation reaches it after hours of training. ``decoded`` (if given) receives
    ``"<dataset> <split>" -> frames decoded``, so ``--plan`` can say what the check covered.
    """
    from clipdepth.data.common import DataError
    from clipdepth.data.splits import cache_dir as split_cache_dir
    from clipdepth.data.splits import resolve_split_list, split_name, split_url
    from clipdepth.study.experiments import PROFILES

    setup = PROFILES["paper"].setup(dataset)
    root = Path(setup.root.replace("{data_dir}", str(data_dir)))
    depth_root = Path(setup.depth_root.replace("{data_dir}", str(data_dir))) if setup.depth_root else None
    how = _HOW_NYU if dataset == "nyu" else _HOW_KITTI
    missing: list[Missing] = []
    roots = [(root, f"{dataset} data root")] + ([(depth_root, "kitti annotated depth root")] if depth_root else [])
    absent = [(p, what) for p, what in roots if not p.is_dir()]
    for p, what in absent:
        missing.append(Missing(f"{what}: {p} does not exist", how.replace("<root>", str(root))
                               .replace("<raw root>", str(root)).replace("<depth root>", str(depth_root))))
    for split in ("train", "test"):
        name = split_name(dataset, split)
        try:
            lst = resolve_split_list(dataset, split, root, fetch=False)
        except (DataError, OSError) as exc:
            if not (root / name).is_file() and not (split_cache_dir() / name).is_file():
                missing.append(Missing(
                    f"{dataset} {split} split list {name}: not in {root} nor in {split_cache_dir()}",
                    f"`clipdepth data download splits` (puts the BTS lists into {split_cache_dir()}), or "
                    f"download {split_url(name)} into {root}",
                ))
            else:  # present but unusable, e.g. a checksum mismatch: the reader's message says why
                missing.append(Missing(f"{dataset} {split} split list: {exc}", _HOW_SPLITS))
            continue
        if absent:
            continue
        try:
            if dataset == "nyu":
                from clipdepth.data.nyu import NYUDepthV2

                reader = NYUDepthV2(root, split, lst, on_missing="skip", fetch=False, subset=subset)
            else:
                from clipdepth.data.kitti import KITTIEigen

                reader = KITTIEigen(root, depth_root, split, lst, on_missing="skip", fetch=False, subset=subset)
        except DataError as exc:
            missing.append(Missing(f"{dataset} {split}: {exc}", how))
            continue
        if reader.missing:
            first = ", ".join(str(p) for p in reader.missing[:3])
            missing.append(Missing(
                f"{dataset} {split}: {len(reader.missing)} of the files listed in {lst} are missing (e.g. {first})",
                how.replace("<root>", str(root)).replace("<raw root>", str(root))
                .replace("<depth root>", str(depth_root)),
            ))
        if decode:
            from clipdepth.data.validate import validate_split

            problems = validate_split(reader, progress=sys.stderr.isatty(), workers=workers)
            if decoded is not None:
                decoded[f"{dataset} {split}"] = len(getattr(reader, "items", reader))
            for problem in problems[:SHOWN_BAD_FILES]:
                missing.append(Missing(f"{dataset} {split}: {problem}", _HOW_BAD_FILE))
            if len(problems) > SHOWN_BAD_FILES:
                missing.append(Missing(
                    f"{dataset} {split}: {len(problems) - SHOWN_BAD_FILES} more unusable files",
                    f"`clipdepth data check --dataset {dataset} --root {root} --split {split}` lists them all",
                ))
    return missing


def find_cached_weights(arch: str, tag: str) -> Path | None:
    """:func:`clipdepth.report.provenance.find_cached_weights`, imported when first needed: the checks
    that fail fast (arguments, parameters, output folders) run without loading torch and open_clip."""
    from clipdepth.report.provenance import find_cached_weights as find

    return find(arch, tag)


def weights_file_problem(path: str | os.PathLike[str], arch: str = "RN50-quickgelu") -> str | None:
    """One line saying why ``path`` is not a usable ``arch`` checkpoint (missing, a directory, empty, text,
    truncated, another architecture), or None. Read in full (a second or two; imports torch), in every
    profile and for ``--plan``, so a bad file stops the run here rather than in every row group's worker."""
    from clipdepth.model.checkpoints import CheckpointError, read_state_dict

    try:
        read_state_dict(path, arch)
    except CheckpointError as exc:
        return str(exc).splitlines()[0]
    return None


def check_paper_prerequisites(
    datasets: Sequence[str],
    data_dir: str | os.PathLike[str],
    weights: str | None,
    arch: str = "RN50-quickgelu",
    decode: bool = True,
    workers: int | None = None,
    subset: int | None = None,
    decoded: dict[str, int] | None = None,
    verify_weights: bool = False,
) -> list[Missing]:
    """Everything the paper profile needs that is not on this machine or not usable (empty list = ready).

    Only local checks (directory listings, split-list checksums, the open_clip cache and, with
    ``decode``, decoding every listed file in ``workers`` threads), so nothing is downloaded; at paper
    size the decoding takes a minute or two, the rest seconds. ``decoded`` receives the frames decoded
    per ``"<dataset> <split>"``. With ``verify_weights`` a weights file is read and matched against
    ``arch`` (a second or two; imports torch), so a checkpoint of another architecture, a truncated file
    or a file that is not a checkpoint stops the run here, in one line, instead of failing every row group.
    """
    from clipdepth.study.experiments import PROFILES

    missing: list[Missing] = []
    data_dir = Path(data_dir)
    for dataset in dict.fromkeys(datasets):
        missing += _check_dataset(dataset, data_dir, decode=decode, workers=workers, subset=subset,
                                  decoded=decoded)
    effective = weights if weights is not None else PROFILES["paper"].weights
    path = Path(str(effective)).expanduser()
    if is_weights_file(effective):
        if not path.is_file():
            missing.append(Missing(f"CLIP weights file {path} does not exist",
                                   "pass a local RN50 checkpoint with -p weights PATH: OpenAI's RN50.pt (TorchScript, "
                                   "as clip.load caches it), open_clip's open_clip_pytorch_model.bin or "
                                   "open_clip_model.safetensors, or a state dict .pt/.pth"))
        elif verify_weights and (problem := weights_file_problem(path, arch)):
            missing.append(Missing(f"CLIP weights: {problem}",
                                   f"pass a {arch} checkpoint with -p weights PATH (OpenAI's RN50.pt, open_clip's "
                                   ".bin/.safetensors, or a state dict .pt/.pth)"))
    elif find_cached_weights(arch, str(effective)) is None:
        missing.append(Missing(
            f"CLIP {arch} weights '{effective}' are not in open_clip's cache",
            f"on a machine with network access run `python -c \"import open_clip; open_clip.create_model("
            f"'{arch}', pretrained='{effective}')\"` (fills the Hugging Face cache), or download the OpenAI "
            "RN50.pt checkpoint and pass it with -p weights /path/to/RN50.pt",
        ))
    return missing


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One notebook to execute with its final parameters."""

    name: str
    path: Path
    parameters: dict[str, Any]
    status: str = "pending"
    seconds: float = 0.0
    error: str = ""
    env: dict[str, str] = field(default_factory=dict)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_all.sh",
        description="Execute the table notebooks with papermill into reports/<profile>/ and write index.html.",
    )
    parser.add_argument("--profile", default="demo", help="demo (default: offline, CPU, minutes) or paper")
    parser.add_argument("--only", action="append", default=[], metavar="NAMES",
                        help="comma-separated notebooks to run: full names, NN prefixes or name parts")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="notebooks run in parallel, and with --executor local/submitit-local also row groups "
                             "(default 1)")
    parser.add_argument("--force", action="store_true", help="re-run finished experiments instead of reusing them")
    parser.add_argument("--subset", type=int, default=None, metavar="N",
                        help="use only the first N lines of every train and test list (= -p subset N): a rehearsal, "
                             "labelled on every page, with no verdicts against the paper")
    parser.add_argument("--allow-stale", action="store_true",
                        help="reuse finished runs computed by other code (= -p allow_stale True); marked stale")
    parser.add_argument("--plan", action="store_true",
                        help="print the rows and row groups it would train, the images it reads, the disk it writes "
                             "and an estimated wall time, then stop without running anything")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a notebook parameter in every notebook that has it")
    parser.add_argument("--reports-dir", default=None,
                        help="root of the reports (default: <repo>/reports); output goes to <DIR>/<profile>/")
    parser.add_argument("--notebooks-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=None, metavar="S",
                        help="papermill per-cell execution timeout in seconds (default: none)")
    add_executor_arguments(parser)
    return parser


def _select(notebooks: list[Path], only: list[str]) -> list[Path]:
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    if not wanted:
        return notebooks
    chosen: list[Path] = []
    for w in wanted:
        stem = w.removesuffix(".ipynb")
        hits = [p for p in notebooks if p.stem == stem] or [
            p for p in notebooks if p.stem.startswith(stem + "_") or stem in p.stem]
        if not hits:
            raise ValueError(f"no notebook matches {w!r}; available: {', '.join(p.stem for p in notebooks)}")
        chosen += [p for p in hits if p not in chosen]
    return [p for p in notebooks if p in chosen]


def _gpu_count() -> int:
    """GPUs visible to this process (nvidia-smi, so that torch need not be imported)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    return [str(i) for i in range(_gpu_count())]


OWNER_FILE = ".run_all.owner"


@contextlib.contextmanager
def reports_lock(out_dir: Path) -> Iterator[None]:
    """Hold the lock ``<reports>/<profile>.lock`` while this invocation computes rows and writes its reports.

    Why one lock for the whole invocation rather than unique temporaries per file: two ``./run_all.sh``
    writing one profile folder would each write ``logs/<name>.log``, the executed notebooks, every
    notebook's ``results.*`` and the index; unique temporaries would keep each file whole but still
    leave a page of one invocation next to the log and results of the other. The second invocation
    therefore says who holds the folder (``another ./run_all.sh is writing reports/demo (pid N);
    waiting``), waits, and then runs -- reusing every row the first one computed. The holder's pid and
    host are kept in ``<profile>/.run_all.owner`` for that message.
    """
    owner = out_dir / OWNER_FILE
    what = f"reports of {out_dir}"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(out_dir, timeout=0, what=what))
        except LockTimeout:
            try:
                holder = owner.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            print(f"run_all: another ./run_all.sh is writing {out_dir} (pid {holder}); waiting", file=sys.stderr,
                  flush=True)
            stack.enter_context(file_lock(out_dir, what=what))
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(owner, f"{os.getpid()} on {socket.gethostname()}")
        try:
            yield
        finally:
            owner.unlink(missing_ok=True)


#: papermill processes running now, stopped on Ctrl-C (:func:`_stop_notebooks`).
_RUNNING: set[subprocess.Popen] = set()


def _stop_notebooks() -> None:
    """Terminate the papermill processes still running (Ctrl-C may have reached only this process)."""
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.terminate()


def _execute(job: Job, out_dir: Path, notebooks_dir: Path, timeout: int | None) -> Job:
    """Run one notebook through the papermill CLI; its output goes to ``logs/<name>.log``."""
    out_nb = out_dir / f"{job.name}.ipynb"
    log = out_dir / "logs" / f"{job.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(job.path), str(out_nb), "-k", "python3",
           "--cwd", str(notebooks_dir), "-y", json.dumps(job.parameters), "--log-output", "--no-progress-bar",
           "--request-save-on-cell-execute"]
    if timeout:
        cmd += ["--execution-timeout", str(timeout)]
    env = {**os.environ, **job.env}
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        with subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(repo_root())) as proc:
            _RUNNING.add(proc)
            try:
                proc.wait()
            finally:
                _RUNNING.discard(proc)
    job.seconds = time.perf_counter() - t0
    if proc.returncode == 0:
        job.status = "ok"
    else:
        job.status = "failed"
        job.error = _last_error(log) or f"papermill exited with {proc.returncode}"
    return job


def _last_error(log: Path) -> str:
    """The most telling line of a failed run's log (the exception line papermill reports)."""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[-300:]
    return lines[-1][-300:] if lines else ""


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _without_widgets(nb: Any) -> Any:
    """The notebook without Jupyter widget outputs (progress bars) and their saved state.

    A static page cannot run widgets: nbconvert would load a widget renderer from unpkg.com (absent
    offline) and fall back to the bar's first frame ("0%"), so a bar in a report is only noise. The
    executed ``.ipynb`` keeps them for JupyterLab.
    """
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if _WIDGET_VIEW not in o.get("data", {})]
    return nb


def _render_html(out_nb: Path, html_path: Path) -> str | None:
    """Executed notebook -> HTML without code cells; returns an error message or None."""
    try:
        import nbformat
        from nbconvert import HTMLExporter

        exporter = HTMLExporter()
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
        body, _ = exporter.from_notebook_node(_without_widgets(nbformat.read(str(out_nb), as_version=4)))
        atomic_write_text(html_path, body)
    except Exception as exc:  # a rendering problem must not hide the run's results
        return f"{type(exc).__name__}: {exc}"
    return None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


#: Said on Ctrl-C (exit status 130, the shell's for SIGINT).
INTERRUPTED = ("run_all: interrupted; finished row groups and notebooks are kept, and a rerun resumes the others "
               "from their last checkpoints")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``./run_all.sh``; returns the exit status (see module docstring).

    Ctrl-C stops the worker pools and the notebooks and prints :data:`INTERRUPTED` (exit 130), not a
    traceback; an error the project raises on purpose that reaches here (bad data, checkpoint, parameter)
    prints as its one line (exit 2).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _stop_notebooks()
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        message = expected_error(exc)
        if message is None:  # a bug: its traceback is what helps
            raise
        print(f"run_all: error: {message}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:  # first: `--executor slurm` on a machine without Slurm must fail before anything runs
        executor_options = options_from_args(args)
    except ExecutorError as exc:
        print(f"run_all: error: {exc}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    force_since = time.time()
    started_at = _now()
    from clipdepth.study.experiments import PROFILES

    def fail(message: str, code: int = 2) -> int:
        print(f"run_all: error: {message}", file=sys.stderr)
        return code

    if args.profile not in PROFILES:
        return fail(f"unknown profile {args.profile!r}; valid: {', '.join(PROFILES)}")
    if args.jobs < 1:
        return fail("--jobs must be >= 1")
    if args.timeout is not None and args.timeout < 1:
        return fail(f"--timeout {args.timeout}: must be a number of seconds >= 1 (leave it out for no timeout)")
    root = repo_root()
    caller = caller_dir()
    notebooks_dir = caller / Path(args.notebooks_dir).expanduser() if args.notebooks_dir else root / "notebooks"
    all_notebooks = discover_notebooks(notebooks_dir)
    if not all_notebooks:
        return fail(f"no notebooks matching {NOTEBOOK_GLOB} in {notebooks_dir}")
    try:
        selected = _select(all_notebooks, args.only)
    except ValueError as exc:
        return fail(str(exc))

    # 1. every notebook's parameters, and every -p name checked before anything runs
    defaults: dict[str, dict[str, Any]] = {}
    for nb in selected:
        try:
            defaults[nb.stem] = notebook_parameters(nb)
        except NotebookParameterError as exc:
            return fail(str(exc))
    valid = sorted({name for d in defaults.values() for name in d})
    overrides: dict[str, Any] = {}
    shorthands = [("subset", str(args.subset))] if args.subset is not None else []
    shorthands += [("allow_stale", "True")] if args.allow_stale else []
    for name, raw in [*args.parameter, *shorthands]:
        if name in RESERVED:
            return fail(f"parameter {name!r} is set by run_all; use {RESERVED[name]} instead")
        if name not in valid:
            import difflib

            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return fail(f"unknown parameter {name!r}{hint}; no selected notebook has it. "
                        f"Valid parameter names: {', '.join(valid)}")
        try:  # type, choices, CUDA present, files exist; paths made absolute from the caller's directory
            overrides[name] = check_parameter(name, parse_value(raw), caller)
        except ParameterError as exc:
            return fail(str(exc))

    reports_root = Path(os.path.normpath(caller / Path(args.reports_dir).expanduser())) if args.reports_dir \
        else root / "reports"
    out_dir = reports_root / args.profile
    problem = output_dir_problem(reports_root, "--reports-dir") or output_dir_problem(out_dir, "--reports-dir")
    if problem:
        return fail(problem)
    if args.profile != "paper" and isinstance(overrides.get("weights"), str) and is_weights_file(overrides["weights"]):
        problem = weights_file_problem(overrides["weights"])  # the paper profile checks it with its prerequisites
        if problem:
            return fail(f"parameter 'weights': {problem}")
    gpu_ids = _gpu_ids() if args.profile == "paper" else []
    jobs: list[Job] = []
    for nb in selected:
        nb_defaults = defaults[nb.stem]
        params: dict[str, Any] = {}
        for name, value in overrides.items():
            if name in PARAMETERS and name in nb_defaults:
                params[name] = value  # checked against its declaration above
            elif name in nb_defaults:
                try:
                    params[name] = check_parameter(name, value, caller, nb_defaults)
                except ValueError as exc:
                    return fail(f"{nb.stem}: {exc}")
        if "profile" in nb_defaults:
            params["profile"] = args.profile
        if "reports_dir" in nb_defaults:
            params["reports_dir"] = str(reports_root)
        if args.force and "force" in nb_defaults:
            params["force"] = True
        if args.profile == "paper" and "device" in nb_defaults and "device" not in overrides and gpu_ids:
            params["device"] = "cuda"
        env = dict(DEMO_ENV if args.profile == "demo" else PAPER_ENV)
        if args.force:  # rows shared by several notebooks are recomputed once per invocation
            env["CLIPDEPTH_FORCE_SINCE"] = f"{force_since:.3f}"
        if args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # parallel notebooks share the CPU cores instead of each starting one thread per core
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
        jobs.append(Job(nb.stem, nb, params, env=env))
    if args.profile == "paper" and gpu_ids:
        for i, job in enumerate(jobs):  # one GPU per parallel slot, round robin
            job.env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % min(len(gpu_ids), args.jobs)]

    # 2. paper profile: stop within seconds if data or weights are missing
    decoded: dict[str, int] = {}  # frames decoded by the check, per "<dataset> <split>" (shown by --plan)
    if args.profile == "paper":
        missing: list[Missing] = []
        seen: set[tuple] = set()
        for job in jobs:
            d = {**defaults[job.name], **job.parameters}
            # a notebook without a datasets parameter is assumed to need what the user asked the others for
            datasets = d.get("datasets") or overrides.get("datasets") or list(DATASETS)
            datasets = [datasets] if isinstance(datasets, str) else list(datasets)
            # a notebook without a weights parameter (06: weights per backbone) needs the others' CLIP weights
            weights = d.get("weights") if "weights" in defaults[job.name] else overrides.get("weights")
            key = (tuple(datasets), str(d.get("data_dir", "data")), str(weights), d.get("subset"))
            if key in seen:
                continue
            seen.add(key)
            data_dir = Path(str(d.get("data_dir", "data"))).expanduser()
            data_dir = data_dir if data_dir.is_absolute() else root / data_dir
            for m in check_paper_prerequisites(datasets, data_dir, weights, subset=d.get("subset"),
                                               decoded=decoded, verify_weights=True):
                if all(m.what != x.what for x in missing):
                    missing.append(m)
        if missing:
            print("run_all: the paper profile cannot start; missing prerequisites:", file=sys.stderr)
            for m in missing:
                print(f"  - {m.what}\n      how to get it: {m.how}", file=sys.stderr)
            print("Nothing was run. Fix the items above (or pass -p data_dir DIR / -p weights PATH) and retry; "
                  "`./run_all.sh` without --profile runs the offline demo.", file=sys.stderr)
            return 3
        if not gpu_ids:
            print("run_all: warning: no GPU visible; the paper profile on CPU takes a very long time", file=sys.stderr)

    # 3. the row groups of the table notebooks, computed before the notebooks (which then reuse them)
    for key, value in (DEMO_ENV if args.profile == "demo" else PAPER_ENV).items():
        os.environ.setdefault(key, value)
    if args.force:
        os.environ["CLIPDEPTH_FORCE_SINCE"] = f"{force_since:.3f}"
    from clipdepth.train.plan import describe_plan, plan_lines, plan_tables

    planned = [(notebook_tables(job.path), {**defaults[job.name], **job.parameters}) for job in jobs]
    with contextlib.ExitStack() as stack:
        if args.plan and args.profile == "demo":
            # the demo's scenes are rendered to name the samples (they are part of each group's key); for
            # --plan into a temporary folder, since nothing is written (a run's key omits the data root)
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="clipdepth-plan-"))
            planned = [(tables, {**params, "data_dir": scratch}) for tables, params in planned]
        try:
            units, _ = plan_tables(planned, args.profile)
        except (ValueError, OSError) as exc:  # e.g. a subset larger than a list, an unreadable list
            return fail(str(exc).splitlines()[0], 3 if args.profile == "paper" else 2)
    if args.plan:
        summary = describe_plan(units, out_dir)
        print(f"run_all: plan for profile {args.profile} ({len(jobs)} notebook(s)); nothing is run")
        for line in plan_lines(summary):
            print(line)
        if decoded:  # the check above stops with exit 3 on any problem, so reaching here means none
            counts = ", ".join(f"{name} {n}" for name, n in decoded.items())
            print(f"data check: every listed file decoded, no problems ({counts} frame(s))")
        return 0
    # 3-4 write <reports>/<profile>: one invocation at a time (see reports_lock)
    with reports_lock(out_dir):
        if units:
            print(f"run_all: {len(units)} row group(s) through the {executor_options.executor} executor")
            sys.stdout.flush()
            execution = run_units(units, out_dir / "logs", executor_options, gpus=gpu_ids)
            if not execution.ok:
                summary = (f"run_all: {len(execution.failed)} row group(s) failed (finished groups are kept; a rerun "
                           "computes only what is missing); no notebook was run")
                refused = [o for o in execution.failed if o.refused]
                for message in dict.fromkeys(o.error for o in refused):  # bad data, checkpoint, parameter
                    print(f"run_all: error: {message}", file=sys.stderr)
                print(summary, file=sys.stdout if len(refused) == len(execution.failed) else sys.stderr)
                return 1

        # 4. the notebooks
        out_dir.mkdir(parents=True, exist_ok=True)
        banner = PROFILES[args.profile].banner
        if banner:
            print(f"*** {banner} ***")
        print(f"run_all: profile {args.profile}, {len(jobs)} notebook(s), {args.jobs} job(s), output {out_dir}")
        for job in jobs:
            shown = {k: v for k, v in job.parameters.items() if k not in ("reports_dir",)}
            print(f"  {job.name}: {json.dumps(shown)}")
        sys.stdout.flush()
        pool = futures.ThreadPoolExecutor(max_workers=args.jobs)
        try:
            pending = {pool.submit(_execute, job, out_dir, notebooks_dir, args.timeout): job for job in jobs}
            for done in futures.as_completed(pending):
                job = done.result()
                mark = "ok" if job.status == "ok" else "FAILED"
                print(f"  [{mark}] {job.name} ({job.seconds:.0f} s)" + (f": {job.error}" if job.error else ""))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_notebooks()
            raise
        pool.shutdown(wait=True)
        for job in jobs:
            out_nb = out_dir / f"{job.name}.ipynb"
            if out_nb.is_file():
                err = _render_html(out_nb, out_dir / f"{job.name}.html")
                if err:
                    print(f"  warning: could not render {job.name}.html: {err}", file=sys.stderr)

        # 4. index (imported here, not at the top: report_html loads torch through the metrics, seconds that
        # the argument and prerequisite checks above must not wait for)
        from clipdepth.report.index_page import write_index
        from clipdepth.report.provenance import environment_info

        env_info = environment_info()
        run = {
            "profile": args.profile,
            "banner": banner,
            "started_at": started_at,
            "finished_at": _now(),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "command": shlex.join(["./run_all.sh", *argv]),
            "jobs": args.jobs,
            "executor": executor_options.executor,
            "notebooks": {j.name: {"status": j.status, "seconds": round(j.seconds, 1), "error": j.error,
                                   "parameters": j.parameters} for j in jobs},
            **env_info,
        }
        atomic_write_text(out_dir / "run_all.json", json.dumps(run, indent=2, default=str))
        index = write_index(out_dir, run)
        failed = [j for j in jobs if j.status != "ok"]
        print(f"run_all: index {index} ({run['wall_seconds']:.0f} s)")
        if failed:
            print(f"run_all: {len(failed)} notebook(s) failed:", file=sys.stderr)
            for j in failed:
                print(f"  - {j.name}: {j.error}\n      log {out_dir / 'logs' / (j.name + '.log')}; "
                      f"executed notebook {out_dir / (j.name + '.ipynb')}", file=sys.stderr)
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
