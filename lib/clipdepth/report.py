"""Our numbers beside the published ones: notebook context, row runner, comparisons, figures, results files.

Why one module: every table notebook does the same five things -- record its parameters, run registry
rows, compare them with the paper, draw figures, write machine-readable results -- and the notebooks
must stay thin (DESIGN.md sections 1-2). Keeping those steps here means a notebook is a dozen readable
calls, the tests can exercise the steps without Jupyter, and ``./run_all.sh`` (``clipdepth.runall``)
and the HTML index (:mod:`clipdepth.report_html`) read what the notebooks wrote instead of parsing
notebooks.

Typical notebook::

    ctx = report.start_notebook("01_token_ablation", params, profile=profile, reports_dir=reports_dir)
    rows = report.run_rows(ctx, ctx.experiment_names("t3"))
    comparison = report.compare_with_paper(rows)
    report.comparison_table(comparison)
    report.save_figure(ctx, report.plot_comparison(comparison, metric="abs_rel"), "comparison_abs_rel")
    report.finish_notebook(ctx, rows)

Files written per notebook, under ``<reports_dir>/<profile>/<notebook>/``: ``results.json`` (parameters,
package versions, weights id, git commit, every metric of every row, the comparison with the paper,
wall time, banner), ``results.csv`` (one line per table row: our metrics, the paper's, differences),
``results.md`` (the same as a readable table) and the PNG figures.

Paper "RMSL": the paper's column is a mean *squared* log error (see
:data:`clipdepth.reference.PAPER_METRIC_NOTE`), so it is compared with our ``log_mse``; our true
``rmse_log`` is shown on its own line with no published counterpart.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import experiments
from .metrics import HIGHER_IS_BETTER, METRIC_NAMES
from .reference import PAPER_METRIC_NOTE, reference_for
from .train import resolve_row  # re-exported: notebooks bind rows through report

__all__ = [
    "COMPARE_METRICS",
    "METRIC_LABELS",
    "TOLERANCE",
    "NotebookContext",
    "compare_with_paper",
    "comparison_table",
    "environment_info",
    "finish_notebook",
    "markdown_table",
    "pick_examples",
    "plot_comparison",
    "plot_qualitative",
    "repo_path",
    "repo_root",
    "resolve_device",
    "resolve_row",
    "run_rows",
    "save_figure",
    "show_banner",
    "start_notebook",
    "within_tolerance",
    "write_index",
]

#: Order in which metrics are compared and shown: the paper's columns first (RMSL is ``log_mse``),
#: then our true ``rmse_log`` and ``silog``, which have no published counterpart.
COMPARE_METRICS: tuple[str, ...] = (
    "abs_rel", "sq_rel", "rmse", "log_mse", "log10", "d1", "d2", "d3", "rmse_log", "silog",
)

#: Column headers. The log_mse label says in the table itself what the paper's "RMSL" really is.
METRIC_LABELS: dict[str, str] = {
    "abs_rel": "AbsRel",
    "sq_rel": "SqRel",
    "rmse": "RMSE",
    "log_mse": "RMSL(paper)=log_mse",
    "log10": "log10",
    "d1": "δ<1.25",
    "d2": "δ<1.25²",
    "d3": "δ<1.25³",
    "rmse_log": "RMSE-log (ours only)",
    "silog": "SILog (ours only)",
}

#: "Within tolerance" means |ours - paper| <= max(abs, rel * |paper|): 5 % of the published value,
#: but never stricter than 0.005 (the paper prints three decimals, so rounding alone moves 0.0005).
#: It is our reproduction criterion, not the paper's; it is recorded in every results.json.
TOLERANCE: dict[str, float] = {"rel": 0.05, "abs": 0.005}

_REPO_MARKERS = ("pyproject.toml", "notebooks")


# ---------------------------------------------------------------------------------------------
# Paths, devices and the environment
# ---------------------------------------------------------------------------------------------


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


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) picks CUDA when visible, else CPU; anything else is returned unchanged."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


_VERSIONED = (
    "clipdepth", "torch", "torchvision", "open_clip_torch", "numpy", "pandas", "matplotlib",
    "papermill", "nbconvert", "ipykernel",
)


def environment_info() -> dict[str, Any]:
    """Package versions, Python, platform and git state: what a reader needs to trust a number."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"versions": versions, "platform": platform.platform(), "git": git_state()}


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repository (None values outside a git checkout)."""
    root = root or repo_root()

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def weights_info(weights: str | None, profile: str, arch: str = "RN50-quickgelu") -> dict[str, Any]:
    """What CLIP weights a run used: the requested value, the effective one and a stable id.

    A local file or a tag found in open_clip's cache is identified by its SHA-256, so results from
    different machines can be matched on the exact weights rather than on a path or a name.
    """
    from .backbone import weights_id

    effective = weights if weights is not None else experiments.PROFILES[profile].weights
    info: dict[str, Any] = {"requested": weights, "effective": effective, "arch": arch}
    info["id"] = weights_id(effective)
    if effective is not None and not Path(str(effective)).expanduser().is_file():
        from .runall import find_cached_weights

        cached = find_cached_weights(arch, str(effective))
        if cached is not None:
            info["file"] = str(cached)
            info["sha256"] = _sha256(cached)
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Notebook context
# ---------------------------------------------------------------------------------------------


@dataclass
class NotebookContext:
    """State one notebook carries from :func:`start_notebook` to :func:`finish_notebook`.

    ``out_dir`` is ``<reports_dir>/<profile>/<name>``; ``examples`` maps experiment names to the test
    images kept by :func:`run_rows` for qualitative figures; ``figures`` lists saved figure files.
    """

    name: str
    profile: str
    params: dict[str, Any]
    reports_dir: Path
    out_dir: Path
    banner: str | None
    started_at: str
    t0: float
    figures: list[str] = field(default_factory=list)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _clips: dict[tuple[str, str | None, str], Any] = field(default_factory=dict, repr=False)
    _forced: set[str] = field(default_factory=set, repr=False)

    @property
    def datasets(self) -> list[str]:
        """The datasets asked for (parameter ``datasets``, default both), validated."""
        wanted = self.params.get("datasets") or list(experiments.DATASETS)
        if isinstance(wanted, str):
            wanted = [wanted]
        bad = [d for d in wanted if d not in experiments.DATASETS]
        if bad:
            raise ValueError(f"unknown dataset(s) {bad}; valid: {', '.join(experiments.DATASETS)}")
        return list(wanted)

    def experiment_names(self, table: str | int) -> list[str]:
        """Registry names of one paper table's rows for the requested datasets, in paper order."""
        return [exp.name for d in self.datasets for exp in experiments.select(table=table, dataset=d)]

    def clip(self, arch: str, weights: str | None, device: str) -> Any:
        """CLIP loaded once per (arch, weights, device) and shared by every row of the notebook."""
        key = (arch, weights, device)
        if key not in self._clips:
            from .backbone import load_clip

            self._clips[key] = load_clip(arch, weights, seed=0, device=device)
        return self._clips[key]


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _configure_matplotlib() -> None:
    """Use the non-interactive Agg backend when nothing can show a window (no kernel, no display).

    Inside a Jupyter kernel the inline backend (or ``MPLBACKEND=Agg`` from run_all) is kept: figures
    are displayed as PNG by :func:`save_figure` either way.
    """
    if _in_ipython() or os.environ.get("MPLBACKEND"):
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import matplotlib

        matplotlib.use("Agg")


def show_banner(text: str) -> None:
    """Show the profile banner: a coloured box in a notebook, a framed line on a console."""
    if _in_ipython():
        from IPython.display import HTML, display

        display(HTML(
            '<div style="background:#fff3cd;border:2px solid #e0a800;padding:8px 12px;'
            f'font-weight:bold;color:#5c4400">&#9888; {_html_escape(text)}</div>'
        ))
    else:
        line = "!" * (len(text) + 4)
        print(f"{line}\n! {text} !\n{line}")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    import torch

    torch.manual_seed(seed)


def start_notebook(
    name: str, params: Mapping[str, Any], profile: str, reports_dir: str | os.PathLike[str]
) -> NotebookContext:
    """Open a notebook's report: check the profile, prepare folders and environment, show the banner.

    Side effects, each so the notebook itself needs none: ``$CLIPDEPTH_DATA_DIR`` is set from the
    ``data_dir`` parameter (relative to the repository root) because the profiles' data roots are
    resolved from it; ``HF_HUB_OFFLINE=1`` in ``demo`` (nothing may be downloaded); Python, numpy
    and torch are seeded from ``seed``; matplotlib is made non-interactive when headless.
    """
    if profile not in experiments.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(experiments.PROFILES)}")
    params = dict(params)
    params.setdefault("profile", profile)
    reports_root = repo_path(reports_dir)
    out_dir = reports_root / profile / name
    out_dir.mkdir(parents=True, exist_ok=True)
    if params.get("data_dir"):
        os.environ["CLIPDEPTH_DATA_DIR"] = str(repo_path(params["data_dir"]))
    if profile == "demo":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # tqdm.auto warns in kernels without ipywidgets; progress bars are off anyway, the warning is noise
    warnings.filterwarnings("ignore", message="IProgress not found")
    _configure_matplotlib()
    if params.get("seed") is not None:
        _seed_everything(int(params["seed"]))
    banner = experiments.PROFILES[profile].banner
    ctx = NotebookContext(
        name=name, profile=profile, params=params, reports_dir=reports_root, out_dir=out_dir, banner=banner,
        started_at=_now(), t0=time.perf_counter(),
    )
    if banner:
        show_banner(banner)
    return ctx


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Running table rows
# ---------------------------------------------------------------------------------------------


def run_rows(
    ctx: NotebookContext,
    names: Iterable[str],
    *,
    clip_model: Any | None = None,
    progress: bool = False,
    keep_examples: int = 3,
) -> list[dict[str, Any]]:
    """Train (where the row trains) and evaluate registry rows with the notebook's parameters.

    Finished runs are reused by their run key unless the ``force`` parameter is true. Then each run
    folder is recomputed once per notebook even if several rows share it, and once per
    ``./run_all.sh --force`` (which sets ``$CLIPDEPTH_FORCE_SINCE`` to its start time) even if several
    notebooks share it. Returns one dict per row:
    identity (``experiment``, ``table``, ``dataset``, ``row_label``), every metric of
    :data:`clipdepth.metrics.METRIC_NAMES`, and run facts (epochs, seconds, reused, run key).
    Test images kept for figures go to ``ctx.examples[name]``. Parameters read: ``train_mode``,
    ``epochs``, ``weights``, ``seed``, ``device``, ``views``, ``force``, ``runs_dir``, ``cache_dir``.
    """
    from .train import Trainer

    p = ctx.params
    device = resolve_device(p.get("device", "cpu"))
    mode = p.get("train_mode", "cached")
    runs_dir = repo_path(p.get("runs_dir") or "cache/runs")
    cache_dir = repo_path(p.get("cache_dir") or "cache/features")
    rows: list[dict[str, Any]] = []
    for name in names:
        resolved = resolve_row(name, ctx.profile, mode, p.get("epochs"), p.get("weights"), p.get("seed"))
        clip = clip_model if clip_model is not None else ctx.clip(resolved.arch, resolved.weights, device)
        trainer = Trainer(resolved, runs_dir=runs_dir, cache_dir=cache_dir, device=device,
                          views=int(p.get("views", 4)), progress=progress, clip_model=clip)
        force = bool(p.get("force", False)) and str(trainer.run_dir) not in ctx._forced
        if force and _recomputed_since(trainer.run_dir / "result.json", os.environ.get("CLIPDEPTH_FORCE_SINCE")):
            force = False  # another notebook of the same `run_all.sh --force` already recomputed it
        t0 = time.perf_counter()
        result = trainer.run(force=force, keep_examples=keep_examples)
        if force:
            ctx._forced.add(str(trainer.run_dir))
        seconds = time.perf_counter() - t0
        exp = resolved.experiment
        row: dict[str, Any] = {
            "experiment": name,
            "table": exp.table,
            "dataset": exp.dataset,
            "row_label": exp.row_label,
            **{m: float(result.metrics.get(m, math.nan)) for m in METRIC_NAMES},
            "trained": exp.trained,
            "epochs": resolved.epochs,
            "train_mode": exp.train.mode if exp.trained else "none",
            "train_seconds": round(float(result.train_seconds), 3),
            "eval_seconds": round(float(result.eval_seconds), 3),
            "wall_seconds": round(seconds, 3),
            "reused": bool(result.reused),
            "run_key": result.run_key,
        }
        rows.append(row)
        ctx.examples[name] = list(result.examples)
        how = "reused" if result.reused else f"{seconds:.0f} s"
        print(f"{name:<28} abs_rel {row['abs_rel']:.3f}  d1 {row['d1']:.3f}  ({how})")
    return rows


def _recomputed_since(result_file: Path, since: str | None) -> bool:
    """Whether ``result_file`` was written after the Unix time ``since`` (None/invalid: no)."""
    try:
        return since is not None and result_file.is_file() and result_file.stat().st_mtime >= float(since)
    except ValueError:
        return False


def pick_examples(
    ctx: NotebookContext, names: Sequence[str], per_row: int = 1, start: int = 0
) -> list[dict[str, Any]]:
    """Test images of several rows for :func:`plot_qualitative`, each labelled with its row.

    Ordered image by image (all rows for the first image, then the next), so predictions of different
    prompts on the same scene sit one under the other.
    """
    out = []
    for i in range(start, start + per_row):
        for name in names:
            kept = ctx.examples.get(name, [])
            if i < len(kept):
                exp = experiments.get(name)
                out.append({**kept[i], "label": f"{exp.table} {exp.row_label}"})
    return out


# ---------------------------------------------------------------------------------------------
# Comparison with the paper
# ---------------------------------------------------------------------------------------------


def within_tolerance(ours: float, paper: float, tolerance: Mapping[str, float] = TOLERANCE) -> bool | None:
    """Whether ``ours`` reproduces ``paper`` under :data:`TOLERANCE`; None when either is missing."""
    if ours is None or paper is None or _isnan(ours) or _isnan(paper):
        return None
    allowed = max(float(tolerance["abs"]), float(tolerance["rel"]) * abs(float(paper)))
    return abs(float(ours) - float(paper)) <= allowed + 1e-12


def _isnan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _records(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict(orient="records")
    return [dict(r) for r in rows]


def compare_with_paper(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    metrics: Sequence[str] = COMPARE_METRICS,
    tolerance: Mapping[str, float] = TOLERANCE,
) -> pd.DataFrame:
    """Long table: one line per (row, metric) with ``ours``, ``paper``, ``difference`` (ours - paper).

    Rows name their registry ``experiment``; the published numbers come from
    :func:`clipdepth.reference.reference_for`, or from a row's own ``reference`` dict (metric ->
    value) for rows the registry does not know (e.g. baselines). ``paper`` is NaN where the paper
    prints no such column; our ``rmse_log`` and ``silog`` never have one. Also carries ``label``,
    ``higher_is_better`` and ``within_tolerance`` (True/False, None without a paper value).
    """
    out = []
    for row in _records(rows):
        name = row.get("experiment")
        ref = row.get("reference")
        if not isinstance(ref, Mapping):
            ref = reference_for(name) if name else None
        ref = ref or {}
        for metric in metrics:
            ours = _float(row.get(metric))
            paper = _float(ref.get(metric))
            out.append({
                "experiment": name,
                "table": row.get("table"),
                "dataset": row.get("dataset"),
                "row_label": row.get("row_label", name),
                "metric": metric,
                "label": METRIC_LABELS.get(metric, metric),
                "ours": ours,
                "paper": paper,
                "difference": ours - paper,
                "higher_is_better": metric in HIGHER_IS_BETTER,
                "within_tolerance": within_tolerance(ours, paper, tolerance),
            })
    columns = ["experiment", "table", "dataset", "row_label", "metric", "label", "ours", "paper", "difference",
               "higher_is_better", "within_tolerance"]
    return pd.DataFrame(out, columns=columns)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def comparison_table(
    comparison: pd.DataFrame, metrics: Sequence[str] | None = None, decimals: int = 3
) -> pd.DataFrame:
    """Wide view for reading: one line per table row, (metric, ours | paper | diff) columns.

    By default the metrics are those the paper prints for at least one of these rows, then our
    ``rmse_log`` (so the RMSL caveat is visible next to it).
    """
    if comparison.empty:
        return pd.DataFrame()
    if metrics is None:
        published = set(comparison.loc[comparison["paper"].notna(), "metric"])
        metrics = [m for m in COMPARE_METRICS if m in published] + ["rmse_log"]
    frame = comparison[comparison["metric"].isin(metrics)].copy()
    frame["key"] = frame["table"].astype(str) + "|" + frame["dataset"].astype(str) + "|" + frame["row_label"]
    order = list(dict.fromkeys(frame["key"]))
    wide = frame.pivot_table(index="key", columns="metric", values=["ours", "paper", "difference"], aggfunc="first",
                             dropna=False)
    pieces = {}
    for metric in metrics:
        label = METRIC_LABELS.get(metric, metric)
        for part, title in (("ours", "ours"), ("paper", "paper"), ("difference", "diff")):
            if (part, metric) in wide.columns:
                pieces[(label, title)] = wide[(part, metric)]
    table = pd.DataFrame(pieces).reindex(order).round(decimals)
    table.index = pd.MultiIndex.from_tuples([tuple(k.split("|", 2)) for k in order],
                                            names=["table", "dataset", "row"])
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def markdown_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pandas' ``to_markdown`` needs the optional ``tabulate``)."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _fmt(value: Any, decimals: int = 3, signed: bool = False) -> str:
    if _isnan(value):
        return "–"
    return f"{float(value):+.{decimals}f}" if signed else f"{float(value):.{decimals}f}"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def plot_comparison(df: pd.DataFrame, metric: str = "abs_rel", title: str | None = None):
    """Horizontal bars, ours beside the paper's, one panel per dataset, for one metric.

    ``df`` is :func:`compare_with_paper`'s output (or anything with its columns). Rows without a
    published value show our bar only. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    data = df[df["metric"] == metric]
    if data.empty:
        raise ValueError(f"no {metric!r} values to plot; metrics present: {sorted(set(df['metric']))}")
    datasets = list(dict.fromkeys(data["dataset"]))
    heights = [max(2.0, 0.42 * len(data[data["dataset"] == d]) + 1.2) for d in datasets]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    label = METRIC_LABELS.get(metric, metric)
    better = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        part = data[data["dataset"] == dataset]
        labels = [f"{t}: {r}" for t, r in zip(part["table"], part["row_label"], strict=True)]
        y = np.arange(len(part))
        ax.barh(y - 0.2, part["ours"], height=0.4, color="#1f77b4", label="ours")
        has_paper = part["paper"].notna().to_numpy()
        if has_paper.any():
            ax.barh(y[has_paper] + 0.2, part["paper"].to_numpy()[has_paper], height=0.4, color="#ff7f0e",
                    label="paper")
        for yi, ours, paper in zip(y, part["ours"], part["paper"], strict=True):
            if not _isnan(ours):
                ax.text(ours, yi - 0.2, f" {ours:.3f}", va="center", fontsize=7)
            if not _isnan(paper):
                ax.text(paper, yi + 0.2, f" {paper:.3f}", va="center", fontsize=7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{dataset}", fontsize=9, loc="left")
        ax.set_xlabel(f"{label} ({better})", fontsize=8)
        ax.margins(x=0.15)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"{label}: ours vs paper", fontsize=10)
    fig.tight_layout()
    return fig


def _depth_range(examples: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    values = []
    for ex in examples:
        gt = np.asarray(ex["depth"], dtype=float)
        values.append(gt[gt > 0].ravel())
        pred = np.asarray(ex["pred"], dtype=float)
        values.append(pred[np.isfinite(pred)].ravel())
    allv = np.concatenate(values) if values else np.array([0.0, 1.0])
    if allv.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(allv, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def plot_qualitative(examples: Sequence[Mapping[str, Any]], title: str = "", cmap: str = "magma_r"):
    """RGB | ground truth | prediction, one line per example, one colour scale for the whole figure.

    Each example has ``image`` (H x W x 3, floats in [0, 1] or uint8), ``depth`` (metres, 0 = no
    ground truth, drawn grey) and ``pred`` (metres, same H x W); an optional ``label`` titles the
    prediction. A shared scale makes colours comparable across rows and between GT and prediction.
    """
    import matplotlib.pyplot as plt

    if not examples:
        raise ValueError("no examples to plot (did run_rows keep any? keep_examples > 0)")
    vmin, vmax = _depth_range(examples)
    n = len(examples)
    h, w = np.asarray(examples[0]["depth"]).shape[:2]
    panel_w = 3.0
    panel_h = max(1.0, panel_w * h / max(w, 1))
    fig, axes = plt.subplots(n, 3, figsize=(3 * panel_w + 0.8, n * panel_h + 0.8), squeeze=False)
    colours = plt.get_cmap(cmap).with_extremes(bad="#bbbbbb")
    mappable = None
    for i, ex in enumerate(examples):
        image = np.asarray(ex["image"])
        if image.dtype != np.uint8:
            image = np.clip(image.astype(float), 0.0, 1.0)
        gt = np.asarray(ex["depth"], dtype=float)
        pred = np.asarray(ex["pred"], dtype=float)
        axes[i, 0].imshow(image)
        axes[i, 1].imshow(np.ma.masked_where(gt <= 0, gt), cmap=colours, vmin=vmin, vmax=vmax)
        mappable = axes[i, 2].imshow(pred, cmap=colours, vmin=vmin, vmax=vmax)
        name = ex.get("name", "")
        axes[i, 0].set_title(f"RGB {name}" if i == 0 or name else "RGB", fontsize=7)
        axes[i, 1].set_title("ground truth", fontsize=7)
        axes[i, 2].set_title(f"prediction: {ex['label']}" if ex.get("label") else "prediction", fontsize=7)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.suptitle(title or "qualitative results", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.92, 0.15, 0.02, 0.7))
    fig.colorbar(mappable, cax=cax, label="depth (m)")
    return fig


def save_figure(ctx: NotebookContext, fig, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``<out_dir>/<name>.png`` (with the demo banner stamped on it) and show it once.

    Why display the saved PNG instead of relying on the backend: run_all sets ``MPLBACKEND=Agg``,
    under which a kernel would show nothing, and the HTML report must contain the figures.
    """
    import matplotlib.pyplot as plt

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    path = ctx.out_dir / f"{safe}.png"
    if ctx.banner:  # below the axes; bbox_inches="tight" grows the canvas to include it
        fig.text(0.5, -0.01, ctx.banner, ha="center", va="top", fontsize=8, color="#a05a00",
                 bbox={"facecolor": "#fff3cd", "edgecolor": "#e0a800", "boxstyle": "round,pad=0.2"})
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    if path.name not in ctx.figures:
        ctx.figures.append(path.name)
    if _in_ipython():
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path


# ---------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Strict-JSON version of ``obj``: NaN/inf become None, numpy scalars and paths plain values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)


def _row_records(rows: list[dict[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    records = _records(rows)
    for rec in records:
        rec.pop("examples", None)  # arrays belong in figures, not in results files
    return records


def finish_notebook(
    ctx: NotebookContext, rows: list[dict[str, Any]] | pd.DataFrame, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``results.json``, ``results.csv`` and ``results.md`` for the notebook; return the JSON path.

    ``rows`` are the table rows (dicts or a DataFrame); rows naming a registry ``experiment`` (or
    carrying a ``reference`` dict) are also compared with the paper. ``extra`` is stored as is
    (JSON-converted) for notebook-specific results such as nearest-neighbour lists.
    """
    records = _row_records(rows)
    has_names = any(r.get("experiment") for r in records)
    comparison = compare_with_paper(records) if has_names else pd.DataFrame()
    finished = _now()
    wall = time.perf_counter() - ctx.t0
    env = environment_info()
    p = ctx.params
    registered = [r for r in records if _registered(r)]
    arch = experiments.get(registered[0]["experiment"]).arch if registered else "RN50-quickgelu"
    try:
        weights = weights_info(p.get("weights"), ctx.profile, arch)
    except Exception as exc:  # never lose a finished notebook's results over an id lookup
        weights = {"requested": p.get("weights"), "error": f"{type(exc).__name__}: {exc}"}
    payload = {
        "notebook": ctx.name,
        "profile": ctx.profile,
        "banner": ctx.banner,
        "started_at": ctx.started_at,
        "finished_at": finished,
        "wall_seconds": round(wall, 2),
        "parameters": p,
        "device": resolve_device(p.get("device", "cpu")) if "device" in p else None,
        "versions": env["versions"],
        "platform": env["platform"],
        "git": env["git"],
        "weights": weights,
        "metric_names": list(METRIC_NAMES),
        "metric_note": PAPER_METRIC_NOTE,
        "tolerance": TOLERANCE,
        "rows": records,
        "comparison": comparison.to_dict(orient="records") if not comparison.empty else [],
        "figures": list(ctx.figures),
        "extra": dict(extra) if extra else {},
    }
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, json_path)
    _results_csv(records, comparison).to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(_results_markdown(payload, comparison), encoding="utf-8")
    print(f"results written to {json_path} ({len(records)} rows, {wall:.0f} s)")
    return json_path


def _registered(record: Mapping[str, Any]) -> bool:
    return record.get("experiment") in experiments.EXPERIMENTS


def _results_csv(records: list[dict[str, Any]], comparison: pd.DataFrame) -> pd.DataFrame:
    """Rows with our metrics, then ``paper_<metric>`` and ``diff_<metric>`` where the paper has one."""
    frame = pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in records])
    if comparison.empty or frame.empty:
        return frame
    for metric in COMPARE_METRICS:
        part = comparison[comparison["metric"] == metric]
        if part["paper"].notna().any():
            frame[f"paper_{metric}"] = part["paper"].to_numpy()
            frame[f"diff_{metric}"] = part["difference"].to_numpy()
    return frame


def _results_markdown(payload: Mapping[str, Any], comparison: pd.DataFrame) -> str:
    lines = [f"# {payload['notebook']} ({payload['profile']} profile)", ""]
    if payload.get("banner"):
        lines += [f"> **{payload['banner']}**", ""]
    git = payload.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    lines += [
        f"- run: {payload['started_at']} to {payload['finished_at']}, wall time {payload['wall_seconds']:.0f} s",
        f"- git commit: {commit}; weights: {(payload.get('weights') or {}).get('id')}",
        f"- torch {payload['versions'].get('torch')}, open_clip {payload['versions'].get('open_clip_torch')}",
        "",
    ]
    if not comparison.empty:
        published = set(comparison.loc[comparison["paper"].notna(), "metric"])
        metrics = [m for m in COMPARE_METRICS if m in published] + ["rmse_log"]
        header = ["table", "dataset", "row"] + [METRIC_LABELS[m] + " ours / paper (diff)" for m in metrics]
        body = []
        for (_, table, dataset, row_label), part in comparison.groupby(
            ["experiment", "table", "dataset", "row_label"], sort=False
        ):
            cells = []
            for metric in metrics:
                rec = part[part["metric"] == metric].iloc[0]
                if _isnan(rec["paper"]):
                    cells.append(_fmt(rec["ours"]))
                else:
                    cells.append(f"{_fmt(rec['ours'])} / {_fmt(rec['paper'])} ({_fmt(rec['difference'], signed=True)})")
            body.append([table, dataset, row_label, *cells])
        lines += ["## Ours vs paper", "", markdown_table(header, body), ""]
        lines += [f"Note: {payload['metric_note']}", ""]
    else:
        rows = payload["rows"]
        if rows:
            keys = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list))]
            lines += ["## Rows", "", markdown_table(keys, ([r.get(k, "") for k in keys] for r in rows)), ""]
    lines += ["## Parameters", "", "```json", json.dumps(_jsonable(payload["parameters"]), indent=2), "```", ""]
    return "\n".join(lines)


def write_index(profile_dir: str | os.PathLike[str], run: Mapping[str, Any] | None = None) -> Path:
    """Write ``<profile_dir>/index.html`` from the notebooks' results (see :mod:`clipdepth.report_html`)."""
    from .report_html import write_index as _write

    return _write(profile_dir, run)
