"""One name for the notebooks: ``from clipdepth import report`` gives every step a table notebook takes.

Why a facade: a notebook reads as a dozen calls on one module (DESIGN.md sections 1-2), while the
code lives where its job is. Nothing in the package imports this module; it only re-exports:

- :mod:`clipdepth.report.session` -- ``start_notebook``, ``run_rows``, ``finish_notebook`` (results files);
- :mod:`clipdepth.study.comparison` -- metric labels, the tolerance, ``compare_with_paper``, ``comparison_table``;
- :mod:`clipdepth.report.comparison_view` -- ``show_comparison`` (headline view per paper table, full table
  collapsed), ``show_table`` (any wide table as a headline and a collapsed full table);
- :mod:`clipdepth.report.figures` -- ``plot_comparison``, ``plot_qualitative``, ``pick_examples``, ``save_figure``;
- :mod:`clipdepth.report.provenance` -- repository paths, the device, environment and weights identity;
- :mod:`clipdepth.report.index_page` -- ``write_index`` (the reports' ``index.html``);
- :func:`clipdepth.train.plan.resolve_rows` -- how registry rows are bound to the notebook's parameters.

Typical notebook::

    ctx = report.start_notebook("01_token_ablation", params, profile=profile, reports_dir=reports_dir)
    rows = report.run_rows(ctx, ctx.experiment_names("t3"))
    comparison = report.compare_with_paper(rows, verdicts=report.verdicts_for(ctx))
    report.show_comparison(comparison, ctx)
    report.save_figure(ctx, report.plot_comparison(comparison, metric="abs_rel"), "comparison_abs_rel")
    report.finish_notebook(ctx, rows)
"""

from __future__ import annotations

from clipdepth._files import repo_path, repo_root
from clipdepth.model.backbone import resolve_device
from clipdepth.report.comparison_view import show_comparison, show_table
from clipdepth.report.figures import pick_examples, plot_comparison, plot_qualitative, save_figure
from clipdepth.report.index_page import write_index
from clipdepth.report.provenance import environment_info, git_state, weights_info
from clipdepth.report.session import (
    NotebookContext,
    finish_notebook,
    run_rows,
    show_banner,
    start_notebook,
    verdicts_for,
)
from clipdepth.study.comparison import (
    COMPARE_METRICS,
    METRIC_LABELS,
    TOLERANCE,
    compare_with_paper,
    comparison_table,
    markdown_table,
    verdicts_allowed,
    within_tolerance,
)
from clipdepth.train.plan import resolve_rows

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
    "show_comparison",
    "show_table",
    "start_notebook",
    "verdicts_allowed",
    "verdicts_for",
    "weights_info",
    "within_tolerance",
    "write_index",
]
