"""A table notebook's life: open it, run its registry rows, write its results files.

Why one module: every table notebook records its parameters, runs registry rows and writes
machine-readable results in the same way, and the notebooks must stay thin (DESIGN.md sections 1-2).
Keeping those steps here means a notebook is a dozen readable calls, the tests exercise the steps
without Jupyter, and ``./run_all.sh`` (:mod:`clipdepth.run.run_all`) and the HTML index
(:mod:`clipdepth.report.index_page`) read what the notebooks wrote instead of parsing notebooks. The
comparison with the paper is :mod:`clipdepth.study.comparison`, figures are :mod:`clipdepth.report.figures`, the
provenance recorded is :mod:`clipdepth.report.provenance`, the CSV and Markdown views are
:mod:`clipdepth.report.results_files`; :mod:`clipdepth.report` gathers all of them
under one name for the notebooks (its docstring shows a typical notebook).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipdepth._files import atomic_write_text, repo_path
from clipdepth.data.base import subset_label
from clipdepth.eval.metrics import METRIC_NAMES
from clipdepth.model.backbone import load_clip, resolve_device
from clipdepth.report.provenance import environment_info, weights_info
from clipdepth.report.results_files import jsonable, results_csv, results_markdown
from clipdepth.study import experiments
from clipdepth.study.comparison import TOLERANCE, as_records, compare_with_paper, no_verdict_note, verdicts_allowed
from clipdepth.study.reference import PAPER_METRIC_NOTE
from clipdepth.train import plan
from clipdepth.train.lockstep import RunOptions, run_units
from clipdepth.train.plan import RowSpec
from clipdepth.vocab import DATASETS

__all__ = [
    "NotebookContext",
    "finish_notebook",
    "in_ipython",
    "run_rows",
    "show_banner",
    "start_notebook",
    "verdicts_for",
]

#: pandas display options set by :func:`start_notebook`: the comparison tables have up to 30 columns
#: (ours | paper | diff per metric) and must be shown whole, not cut with "..." at pandas' default 20.
DISPLAY_OPTIONS: dict[str, Any] = {"display.max_columns": None, "display.width": 250, "display.max_rows": 200}


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
    wall_start: float = field(default_factory=time.time)  # Unix time: `force` recomputes rows once after it

    @property
    def datasets(self) -> list[str]:
        """The datasets asked for (parameter ``datasets``, default both), validated."""
        wanted = self.params.get("datasets") or list(DATASETS)
        if isinstance(wanted, str):
            wanted = [wanted]
        bad = [d for d in wanted if d not in DATASETS]
        if bad:
            raise ValueError(f"unknown dataset(s) {bad}; valid: {', '.join(DATASETS)}")
        return list(wanted)

    def experiment_names(self, table: str | int) -> list[str]:
        """Registry names of one paper table's rows for the requested datasets, in paper order."""
        return [exp.name for d in self.datasets for exp in experiments.select(table=table, dataset=d)]

    def clip(self, arch: str, weights: str | None, device: str) -> Any:
        """CLIP loaded once per (arch, weights, device) and shared by every row of the notebook."""
        key = (arch, weights, device)
        if key not in self._clips:
            self._clips[key] = load_clip(arch, weights, seed=0, device=device)
        return self._clips[key]


def in_ipython() -> bool:
    """Whether we run inside an IPython kernel (a notebook), where rich output can be displayed."""
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
    if in_ipython() or os.environ.get("MPLBACKEND"):
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import matplotlib

        matplotlib.use("Agg")


def show_banner(text: str) -> None:
    """Show the profile banner: a coloured box in a notebook, a framed line on a console."""
    if in_ipython():
        from IPython.display import HTML, display

        display(HTML(  # class and data-banner: how a page check (tests/test_browser.py) finds it
            '<div class="demo-banner" data-banner="profile" style="background:#fff3cd;border:2px solid #e0a800;'
            f'padding:8px 12px;font-weight:bold;color:#5c4400">&#9888; {_html_escape(text)}</div>'
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

    Side effects, each so the notebook itself needs none: ``HF_HUB_OFFLINE=1`` in ``demo`` (nothing
    may be downloaded); Python, numpy and torch are seeded from ``seed``; matplotlib is made
    non-interactive when headless; pandas shows wide tables whole (:data:`DISPLAY_OPTIONS`).
    """
    if profile not in experiments.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(experiments.PROFILES)}")
    params = dict(params)
    params.setdefault("profile", profile)
    reports_root = repo_path(reports_dir)
    out_dir = reports_root / profile / name
    out_dir.mkdir(parents=True, exist_ok=True)
    if profile == "demo":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    for option, value in DISPLAY_OPTIONS.items():
        pd.set_option(option, value)
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
    specs: Iterable[RowSpec],
    *,
    clip_model: Any | None = None,
    progress: bool = False,
    keep_examples: int = 3,
) -> list[dict[str, Any]]:
    """Train (where the row trains) and evaluate rows with the notebook's parameters, for every seed.

    ``specs`` are registry names, Experiment variants, or (Experiment, weights) pairs. Rows are planned
    by :func:`clipdepth.train.plan.resolve_rows` and run by :mod:`clipdepth.train.lockstep`: trained rows sharing a
    data stream train in lockstep, untrained rows share one evaluation pass, and a finished run is
    reused (``./run_all.sh`` usually computed it before the notebook started). With ``force`` each run
    is recomputed once per notebook, or once per ``./run_all.sh --force``. Returns one dict per
    (seed, row), seed-major: identity (``experiment``, the same for every seed of a row, see
    :func:`clipdepth.train.plan.spec_names`; ``table``, ``dataset``, ``row_label``, ``seed``),
    every metric of :data:`clipdepth.eval.metrics.METRIC_NAMES` (per-image means, the paper's numbers), the
    pixel-pooled metrics (``pooled``), ``per_image`` metrics, the ``protocol`` (mode, BN, views,
    precision, seed, epochs, subset), ``subset_label``, ``stale``, ``computed_by`` (git state of the
    computing process) and run facts. Kept test images go to ``ctx.examples[name]`` (first seed).
    """
    p = ctx.params
    options = plan.run_options(p, force_since=ctx.wall_start, keep_examples=keep_examples, progress=progress)
    specs = list(specs)
    rows = plan.resolve_rows(specs, ctx.profile, p)
    names = plan.spec_names(specs, ctx.profile, p)

    def provide(arch: str, weights: str | None) -> Any:
        return clip_model if clip_model is not None else ctx.clip(arch, weights, options.device)

    t0 = time.perf_counter()
    results = run_units(rows, options, clip_provider=provide)
    seconds = time.perf_counter() - t0
    labels: dict[str, str | None] = {}
    out: list[dict[str, Any]] = []
    for name, resolved, result in zip(names, rows, results, strict=True):
        exp = resolved.experiment
        if resolved.dataset not in labels:
            labels[resolved.dataset] = _subset_label(options, resolved)
        record: dict[str, Any] = {
            "experiment": name,
            "table": exp.table,
            "dataset": exp.dataset,
            "row_label": exp.row_label,
            "seed": exp.train.seed,
            **{m: float(result.metrics.get(m, math.nan)) for m in METRIC_NAMES},
            "pooled": dict(result.pooled),
            "per_image": list(result.per_image),
            "trained": exp.trained,
            "epochs": resolved.epochs,
            "train_mode": result.protocol.get("mode", exp.train.mode if exp.trained else "untrained"),
            "protocol": dict(result.protocol),
            "subset_label": labels[resolved.dataset],
            "stale": bool(result.stale),
            "computed_by": dict(result.provenance.get("git") or {}),
            "train_seconds": round(float(result.train_seconds), 3),
            "eval_seconds": round(float(result.eval_seconds), 3),
            "reused": bool(result.reused),
            "run_key": result.run_key,
            "run_dir": str(result.run_dir),
        }
        out.append(record)
        ctx.examples.setdefault(name, list(result.examples))
        how = "reused" + (" (STALE: computed by other code)" if result.stale else "") if result.reused else "computed"
        print(f"{name:<28} seed {exp.train.seed:<4} abs_rel {record['abs_rel']:.3f}  d1 {record['d1']:.3f}  "
              f"({how})")
    print(f"{len(out)} row(s) in {seconds:.0f} s")
    return out


def _subset_label(options: RunOptions, resolved: Any) -> str | None:
    """"subset: N of <train> train / <test> test" for a subset run, None on full lists."""
    if options.subset is None:
        return None
    trainer = options.trainer(resolved)
    train, test = trainer.split("train"), trainer.split("test")
    return subset_label(options.subset, train.list_length or len(train), test.list_length or len(test))


def _row_records(rows: list[dict[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    records = as_records(rows)
    for rec in records:
        rec.pop("examples", None)  # arrays belong in figures, not in results files
    return records


def verdicts_for(ctx: NotebookContext) -> bool:
    """Whether this notebook may judge its rows against the paper (paper profile, no ``subset``).

    Notebooks pass it on: ``report.compare_with_paper(rows, verdicts=report.verdicts_for(ctx))``.
    """
    return verdicts_allowed(ctx.profile, ctx.params.get("subset"))


def finish_notebook(
    ctx: NotebookContext, rows: list[dict[str, Any]] | pd.DataFrame, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``results.json``, ``results.csv`` and ``results.md`` for the notebook; return the JSON path.

    ``rows`` are the table rows (dicts or a DataFrame), one per experiment and seed; all of them go
    to ``results.json``. Rows naming a registry ``experiment`` (or carrying a ``reference`` dict) are
    also compared with the paper, averaged over seeds; verdicts are drawn only when
    :func:`verdicts_for` allows (``verdicts`` in the JSON; otherwise ``no_verdict`` says why).
    ``extra`` is stored as is (JSON-converted) for notebook-specific results such as
    nearest-neighbour lists.
    """
    records = _row_records(rows)
    has_names = any(r.get("experiment") for r in records)
    p = ctx.params
    subset = p.get("subset")
    verdicts = verdicts_allowed(ctx.profile, subset)
    subset_label = next((r.get("subset_label") for r in records if r.get("subset_label")), None)
    comparison = compare_with_paper(records, verdicts=verdicts) if has_names else pd.DataFrame()
    finished = _now()
    wall = time.perf_counter() - ctx.t0
    env = environment_info()
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
        "verdicts": verdicts,
        "no_verdict": no_verdict_note(ctx.profile, subset, subset_label),
        "subset_label": subset_label,
        "rows": records,
        "comparison": comparison.to_dict(orient="records") if not comparison.empty else [],
        "figures": list(ctx.figures),
        "extra": dict(extra) if extra else {},
    }
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    atomic_write_text(json_path, json.dumps(jsonable(payload), indent=2, allow_nan=False))
    atomic_write_text(out / "results.csv", results_csv(records, comparison, env["git"]).to_csv(index=False))
    atomic_write_text(out / "results.md", results_markdown(payload, comparison))
    print(f"results written to {json_path} ({len(records)} rows, {wall:.0f} s)")
    return json_path


def _registered(record: Mapping[str, Any]) -> bool:
    return record.get("experiment") in experiments.EXPERIMENTS
