"""One name for the notebooks: ``from clipdepth import report`` gives every step a table notebook takes.

Why a facade: a notebook reads as a dozen calls on one module (DESIGN.md sections 1-2), while the
code lives where its job is. Nothing in the package imports this module; it only re-exports, lazily
(PEP 562), so that importing one light submodule (``clipdepth.report._notebooks``) does not load
torch and open_clip for a command that only checks its arguments:

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

import importlib
from typing import Any

#: name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("repo_path", "repo_root"), "clipdepth._files"),
    "resolve_device": "clipdepth.model.backbone",
    **dict.fromkeys(("show_comparison", "show_table"), "clipdepth.report.comparison_view"),
    **dict.fromkeys(("pick_examples", "plot_comparison", "plot_qualitative", "save_figure"),
                    "clipdepth.report.figures"),
    "write_index": "clipdepth.report.index_page",
    **dict.fromkeys(("environment_info", "git_state", "weights_info"), "clipdepth.report.provenance"),
    **dict.fromkeys(("NotebookContext", "finish_notebook", "run_rows", "show_banner", "start_notebook",
                     "verdicts_for"), "clipdepth.report.session"),
    **dict.fromkeys(("COMPARE_METRICS", "METRIC_LABELS", "TOLERANCE", "compare_with_paper", "comparison_table",
                     "markdown_table", "verdicts_allowed", "within_tolerance"), "clipdepth.study.comparison"),
    "resolve_rows": "clipdepth.train.plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipdepth.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
