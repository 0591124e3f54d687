"""Our numbers beside the published ones: metric labels, the tolerance, the comparison and its tables.

Why a module of its own: the notebooks, the results files (:mod:`clipdepth.notebook`) and the HTML
index (:mod:`clipdepth.report_html`) all show the same comparison with the same labels and the same
reproduction criterion; defining them once keeps every page saying the same thing. Pure functions of
rows and published numbers: no files, no models.

Paper "RMSL": the paper's column is a mean *squared* log error (see
:data:`clipdepth.reference.PAPER_METRIC_NOTE`), so it is compared with our ``log_mse``; our true
``rmse_log`` is shown on its own line with no published counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from .metrics import HIGHER_IS_BETTER
from .reference import reference_for

__all__ = [
    "COMPARE_METRICS",
    "METRIC_LABELS",
    "TOLERANCE",
    "as_records",
    "compare_with_paper",
    "comparison_table",
    "format_value",
    "is_missing",
    "markdown_table",
    "within_tolerance",
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


def within_tolerance(ours: float, paper: float, tolerance: Mapping[str, float] = TOLERANCE) -> bool | None:
    """Whether ``ours`` reproduces ``paper`` under :data:`TOLERANCE`; None when either is missing."""
    if ours is None or paper is None or is_missing(ours) or is_missing(paper):
        return None
    allowed = max(float(tolerance["abs"]), float(tolerance["rel"]) * abs(float(paper)))
    return abs(float(ours) - float(paper)) <= allowed + 1e-12


def is_missing(value: Any) -> bool:
    """True for None, NaN and anything that is not a number (a table cell with no value)."""
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def as_records(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a list of plain dicts, whether they came as dicts or as a DataFrame."""
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
    for row in as_records(rows):
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


def format_value(value: Any, decimals: int = 3, signed: bool = False) -> str:
    """A metric for a Markdown cell: three decimals, ``–`` when missing, a sign for differences."""
    if is_missing(value):
        return "–"
    return f"{float(value):+.{decimals}f}" if signed else f"{float(value):.{decimals}f}"
