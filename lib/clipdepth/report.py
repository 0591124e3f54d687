"""One name for the notebooks: ``from clipdepth import report`` gives every step a table notebook takes.

Why a facade: a notebook reads as a dozen calls on one module (DESIGN.md sections 1-2), while the
code lives where its job is. Nothing in the package imports this module; it only re-exports:

- :mod:`clipdepth.notebook` -- ``start_notebook``, ``run_rows``, ``finish_notebook`` (results files);
- :mod:`clipdepth.scorecard` -- metric labels, the tolerance, ``compare_with_paper``, ``comparison_table``;
- :mod:`clipdepth.figures` -- ``plot_comparison``, ``plot_qualitative``, ``pick_examples``, ``save_figure``;
- :mod:`clipdepth.provenance` -- repository paths, the device, environment and weights identity;
- :mod:`clipdepth.report_html` -- ``write_index`` (the reports' ``index.html``);
- :func:`clipdepth.plan.resolve_rows` -- how registry rows are bound to the notebook's parameters.

Typical notebook::

    ctx = report.start_notebook("01_token_ablation", params, profile=profile, reports_dir=reports_dir)
    rows = report.run_rows(ctx, ctx.experiment_names("t3"))
    comparison = report.compare_with_paper(rows, verdicts=report.verdicts_for(ctx))
    report.comparison_table(comparison)
    report.save_figure(ctx, report.plot_comparison(comparison, metric="abs_rel"), "comparison_abs_rel")
    report.finish_notebook(ctx, rows)
"""

from __future__ import annotations

from .figures import pick_examples, plot_comparison, plot_qualitative, save_figure
from .notebook import NotebookContext, finish_notebook, run_rows, show_banner, start_notebook, verdicts_for
from .plan import resolve_rows
from .provenance import environment_info, git_state, repo_path, repo_root, resolve_device, weights_info
from .report_html import write_index
from .scorecard import (
    COMPARE_METRICS,
    METRIC_LABELS,
    TOLERANCE,
    compare_with_paper,
    comparison_table,
    markdown_table,
    verdicts_allowed,
    within_tolerance,
)

__all__ = [
    "COMPARE_METRICS",
    "METRIC_LABELS",
    "TOLERANCE",
    "NotebookContext",
    "compare_with_paper",
    "comparison_table",
    "environment_info",
    "finish_notebook",
    "git_state",
    "markdown_table",
    "pick_examples",
    "plot_comparison",
    "plot_qualitative",
    "repo_path",
    "repo_root",
    "resolve_device",
    "resolve_rows",
    "run_rows",
    "save_figure",
    "show_banner",
    "start_notebook",
    "verdicts_allowed",
    "verdicts_for",
    "weights_info",
    "within_tolerance",
    "write_index",
]
