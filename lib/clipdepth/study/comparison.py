"""Our numbers beside the published ones: metric labels, the tolerance, the comparison and its tables.

Why a module of its own: the notebooks, the results files (:mod:`clipdepth.report.session`) and the HTML
index (:mod:`clipdepth.report.index_page`) all show the same comparison with the same labels, the same
reproduction criterion and the same rule for when a verdict may be drawn; defining them once keeps
every page saying the same thing. Pure functions of rows and published numbers: no files, no models.

What a comparison line says (DESIGN.md section 5b, issues 12 and 13):

- **Verdicts only where meaningful**: "within tolerance" is drawn only for the paper profile on full
  data (:func:`verdicts_allowed`); a demo run or a subset shows the differences only, and says why
  (:func:`no_verdict_note`).
- **Several seeds**: rows repeating an ``experiment`` with different ``seed`` values are averaged;
  the line carries ``n_seeds`` and the half width of the 95 % Student-t interval over seeds
  (:func:`clipdepth.study.stats.t_interval`), and with verdicts allowed the verdict is whether the paper's
  value lies inside that interval rather than the tolerance.
- **Both averages**: ``ours`` is the per-image mean (the paper's convention, the authors'
  ``metrics_ra``); ``pooled`` is the pixel-pooled value (the authors' ``metrics``) where the row has one.
- **Provenance**: protocol (mode, BN, views, precision), seeds, epochs, subset and the commit that
  computed the row travel with every line, so a page can show how each number was produced.

Paper "RMSL": the paper's column is a mean *squared* log error (see
:data:`clipdepth.study.reference.PAPER_METRIC_NOTE`), so it is compared with our ``log_mse``; our true
``rmse_log`` is shown on its own line with no published counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from clipdepth.eval.metrics import HIGHER_IS_BETTER
from clipdepth.study.reference import reference_for
from clipdepth.study.stats import t_interval

__all__ = [
    "COMPARE_METRICS",
    "CONFIDENCE",
    "METRIC_LABELS",
    "PER_IMAGE_LABEL",
    "POOLED_LABEL",
    "POOLED_METRICS",
    "TOLERANCE",
    "as_records",
    "compare_with_paper",
    "comparison_table",
    "computed_by_text",
    "format_mean",
    "format_value",
    "is_missing",
    "markdown_table",
    "no_verdict_note",
    "protocol_text",
    "summarise_rows",
    "verdict_text",
    "verdicts_allowed",
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

#: Confidence of the Student-t interval over seeds.
CONFIDENCE = 0.95

#: Metrics whose pixel-pooled value is shown beside the per-image one (the headline columns).
POOLED_METRICS: tuple[str, ...] = ("abs_rel", "rmse", "d1")

#: How the two averages are labelled on every page. Per image is what the paper prints.
PER_IMAGE_LABEL = "per image (paper)"
POOLED_LABEL = "pixel-pooled"

#: Why a run draws no verdict, by reason (the text after "demo: no verdict" / "subset: no verdict").
_NO_VERDICT_WHY = {
    "subset": "rows computed on part of the train/test lists are not the paper's setting; differences only",
    "profile": "this profile does not run the paper's setting (weights, data, sizes); differences only",
}

#: Columns of :func:`compare_with_paper`, in order.
COMPARISON_COLUMNS: tuple[str, ...] = (
    "experiment", "table", "dataset", "row_label", "metric", "label", "ours", "paper", "difference",
    "higher_is_better", "within_tolerance", "n_seeds", "seeds", "half_width", "paper_in_interval", "verdict",
    "verdict_kind", "pooled", "mode", "bn", "views", "precision", "epochs", "subset_label", "stale",
    "computed_commit", "computed_dirty",
)


def verdicts_allowed(profile: str | None, subset: int | None) -> bool:
    """Whether results may be judged against the paper: the paper profile on the full lists only.

    A demo run (random weights, synthetic scenes) or a subset measures something else than the paper
    did, so a green "within tolerance" there would be a claim the run cannot support (DESIGN 5b).
    """
    return profile == "paper" and subset is None


def no_verdict_note(profile: str | None, subset: int | None, subset_label: str | None = None) -> str | None:
    """One line saying why no verdict is drawn ("demo: no verdict (...)"), or None when one may be.

    The profile is the first reason (a demo subset is still a demo); ``subset_label`` (e.g.
    "subset: 8 of 24,231 train / 654 test") is quoted when given.
    """
    if verdicts_allowed(profile, subset):
        return None
    if profile != "paper":
        return f"{profile}: no verdict ({_NO_VERDICT_WHY['profile']})"
    label = f"; {subset_label}" if subset_label else ""
    return f"subset: no verdict ({_NO_VERDICT_WHY['subset']}{label})"


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


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------------------------
# Several seeds per experiment: one summary per table row
# ---------------------------------------------------------------------------------------------


def _seed_of(row: Mapping[str, Any]) -> int | None:
    seed = row.get("seed")
    if seed is None and isinstance(row.get("protocol"), Mapping):
        seed = row["protocol"].get("seed")
    return None if seed is None or is_missing(seed) else int(seed)


def _group(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by ``experiment`` in first-appearance order; rows without a name stand alone.

    The same seed twice for one experiment is an error: it would count one training run twice and
    shrink the interval.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for i, row in enumerate(records):
        name = row.get("experiment")
        key = name if name else ("__unnamed__", i)
        group = groups.setdefault(key, [])
        seed = _seed_of(row)
        if any(_seed_of(other) == seed for other in group):
            shown = "no seed" if seed is None else f"seed {seed}"
            raise ValueError(f"experiment {name!r} has two result rows with {shown}; each seed must appear once")
        group.append(row)
    return list(groups.values())


def _mean_interval(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, 95 % t half width (NaN below two values) and count of the finite ``values``."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    ci = t_interval(finite, CONFIDENCE)
    return ci.mean, ci.half_width, ci.n


def _provenance(group: list[dict[str, Any]]) -> dict[str, Any]:
    """What every page says about how a table row was produced, merged over its seeds.

    A field that differs between seeds (it should not) is joined with "/" rather than hidden.
    """
    def merged(values: Iterable[Any]) -> Any:
        distinct = list(dict.fromkeys(v for v in values if v is not None))
        if not distinct:
            return None
        return distinct[0] if len(distinct) == 1 else "/".join(str(v) for v in distinct)

    protocols = [r.get("protocol") if isinstance(r.get("protocol"), Mapping) else {} for r in group]
    computed = [r.get("computed_by") if isinstance(r.get("computed_by"), Mapping) else {} for r in group]
    return {
        "mode": merged(p.get("mode") for p in protocols),
        "bn": merged(p.get("bn") for p in protocols),
        "views": merged(p.get("views") for p in protocols),
        "precision": merged(p.get("precision") for p in protocols),
        "epochs": merged(r.get("epochs", p.get("epochs")) for r, p in zip(group, protocols, strict=True)),
        "subset_label": merged(r.get("subset_label") for r in group),
        "stale": any(bool(r.get("stale")) for r in group),
        "computed_commit": merged(c.get("commit") for c in computed),
        "computed_dirty": (any(bool(c.get("dirty")) for c in computed)
                           if any(c.get("dirty") is not None for c in computed) else None),
    }


def summarise_rows(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame, metrics: Sequence[str] = COMPARE_METRICS
) -> list[dict[str, Any]]:
    """One summary per table row: the mean over its seeds, the interval, the pooled value, provenance.

    Returns dicts with the identity (``experiment``, ``table``, ``dataset``, ``row_label``,
    ``reference``), ``seeds`` (sorted, None for rows without one), ``n_seeds``, and per metric
    ``mean``, ``half_width`` (95 % Student-t over seeds; NaN with one seed) and ``n`` (finite
    values), ``pooled`` (mean over seeds of the row's ``pooled`` dict; NaN where absent) and the
    provenance fields of :data:`COMPARISON_COLUMNS`.
    """
    out = []
    for group in _group(as_records(rows)):
        first = group[0]
        name = first.get("experiment")
        summary: dict[str, Any] = {
            "experiment": name, "table": first.get("table"), "dataset": first.get("dataset"),
            "row_label": first.get("row_label", name), "reference": first.get("reference"),
            "seeds": sorted((_seed_of(r) for r in group), key=lambda s: (s is None, s or 0)),
            "n_seeds": len(group), "mean": {}, "half_width": {}, "n": {}, "pooled": {},
            **_provenance(group),
        }
        for metric in metrics:
            mean, half, n = _mean_interval([_float(r.get(metric)) for r in group])
            summary["mean"][metric], summary["half_width"][metric], summary["n"][metric] = mean, half, n
            pooled = [_float(r["pooled"].get(metric)) for r in group if isinstance(r.get("pooled"), Mapping)]
            summary["pooled"][metric] = _mean_interval(pooled)[0] if pooled else math.nan
        out.append(summary)
    return out


# ---------------------------------------------------------------------------------------------
# The comparison with the paper
# ---------------------------------------------------------------------------------------------


def compare_with_paper(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    metrics: Sequence[str] = COMPARE_METRICS,
    tolerance: Mapping[str, float] = TOLERANCE,
    verdicts: bool = False,
) -> pd.DataFrame:
    """Long table: one line per (table row, metric) with ``ours``, ``paper``, ``difference`` (ours - paper).

    Rows name their registry ``experiment``; the published numbers come from
    :func:`clipdepth.study.reference.reference_for`, or from a row's own ``reference`` dict (metric ->
    value) for rows the registry does not know (e.g. baselines). ``paper`` is NaN where the paper
    prints no such column; our ``rmse_log`` and ``silog`` never have one.

    Rows repeating an experiment with different seeds are one line: ``ours`` is their mean,
    ``n_seeds``/``seeds`` say over what, ``half_width`` is the 95 % t-interval half width (NaN for
    one seed). ``pooled`` is the pixel-pooled value where the rows carry one.

    ``verdicts`` (see :func:`verdicts_allowed`; False by default, since a verdict is a claim only
    the paper profile on full data can support): when False, ``within_tolerance``,
    ``paper_in_interval`` and ``verdict`` are None. When True, ``within_tolerance`` applies
    :data:`TOLERANCE` to the mean; with two or more seeds ``paper_in_interval`` says whether the paper's
    value lies in our interval, and ``verdict`` (with ``verdict_kind`` "interval" or "tolerance")
    is that, else the tolerance. Also carries ``label``, ``higher_is_better`` and the provenance
    columns (``mode``, ``bn``, ``views``, ``precision``, ``epochs``, ``subset_label``, ``stale``,
    ``computed_commit``, ``computed_dirty``).
    """
    out = []
    for s in summarise_rows(rows, metrics):
        name = s["experiment"]
        ref = s["reference"]
        if not isinstance(ref, Mapping):
            ref = reference_for(name) if name else None
        ref = ref or {}
        for metric in metrics:
            ours, half, n = s["mean"][metric], s["half_width"][metric], s["n"][metric]
            paper = _float(ref.get(metric))
            tol = within_tolerance(ours, paper, tolerance) if verdicts else None
            inside = None
            if verdicts and n >= 2 and not math.isnan(half) and not math.isnan(paper):
                inside = bool(ours - half <= paper <= ours + half)
            verdict, kind = (inside, "interval") if inside is not None else (tol, "tolerance" if tol is not None
                                                                             else None)
            out.append({
                "experiment": name, "table": s["table"], "dataset": s["dataset"], "row_label": s["row_label"],
                "metric": metric, "label": METRIC_LABELS.get(metric, metric),
                "ours": ours, "paper": paper, "difference": ours - paper,
                "higher_is_better": metric in HIGHER_IS_BETTER,
                "within_tolerance": tol, "n_seeds": s["n_seeds"], "seeds": list(s["seeds"]), "half_width": half,
                "paper_in_interval": inside, "verdict": verdict, "verdict_kind": kind,
                "pooled": s["pooled"][metric],
                **{k: s[k] for k in COMPARISON_COLUMNS[COMPARISON_COLUMNS.index("mode"):]},
            })
    return pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Text shared by every page
# ---------------------------------------------------------------------------------------------


def format_value(value: Any, decimals: int = 3, signed: bool = False) -> str:
    """A metric for a Markdown cell: three decimals, ``–`` when missing, a sign for differences."""
    if is_missing(value):
        return "–"
    return f"{float(value):+.{decimals}f}" if signed else f"{float(value):.{decimals}f}"


def format_mean(value: Any, half_width: Any = None, n_seeds: Any = None, decimals: int = 3) -> str:
    """Our value as a page shows it: "0.412", or "0.412 ± 0.013 (3 seeds)" over several seeds."""
    text = format_value(value, decimals)
    n = 0 if is_missing(n_seeds) else int(n_seeds)
    if n >= 2:
        spread = "" if is_missing(half_width) else f" ± {float(half_width):.{decimals}f}"
        text += f"{spread} ({n} seeds)"
    return text


def protocol_text(line: Mapping[str, Any]) -> str:
    """"cached, BN frozen, 4 views, fp32; seed 42; 3 epochs; subset: 8 of ..." from a comparison line
    or a :func:`summarise_rows` summary; empty for results written before rows carried a protocol."""
    parts = []
    proto = [str(line["mode"])] if line.get("mode") else []
    if line.get("bn"):
        proto.append(f"BN {line['bn']}")
    if line.get("views") is not None and line.get("mode") == "cached" and not is_missing(line.get("views")):
        proto.append(f"{int(line['views'])} views")
    if line.get("precision"):
        proto.append(str(line["precision"]))
    if proto:
        parts.append(", ".join(proto))
    seeds = [s for s in (line.get("seeds") or []) if s is not None]
    if seeds:
        parts.append(("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds))
    epochs = line.get("epochs")
    if epochs is not None and not (isinstance(epochs, float) and math.isnan(epochs)):
        epochs = int(epochs) if not isinstance(epochs, str) else epochs
        parts.append(f"{epochs} epoch" + ("" if epochs == 1 else "s"))
    if line.get("subset_label"):
        parts.append(str(line["subset_label"]))
    return "; ".join(parts)


def computed_by_text(line: Mapping[str, Any], report_git: Mapping[str, Any] | None) -> str:
    """The commit that computed a row, "computed by abc123def456 (dirty)", or "" when it is the report's own.

    Shown only when it differs from ``report_git`` (commit or dirty state), so a page whose rows were
    all computed by the code that wrote it stays quiet; unknown on either side counts as the same.
    """
    commit = line.get("computed_commit")
    if not isinstance(commit, str) or not commit:
        return ""
    report_git = report_git or {}
    dirty = line.get("computed_dirty")
    dirty = None if dirty is None or (isinstance(dirty, float) and math.isnan(dirty)) else bool(dirty)
    same_commit = report_git.get("commit") is None or str(report_git["commit"]) == str(commit)
    same_dirty = dirty is None or report_git.get("dirty") is None or bool(report_git["dirty"]) == dirty
    if same_commit and same_dirty:
        return ""
    return f"computed by {str(commit)[:12]}" + (" (dirty)" if dirty else "")


def verdict_text(lines: pd.DataFrame | Iterable[Mapping[str, Any]]) -> str:
    """The verdict of one table row from its comparison lines: counts, or why there is none.

    "4 of 5 within tolerance", "paper inside our interval: 2 of 3" (several seeds), "no verdict"
    (verdicts not allowed) or "no paper values".
    """
    records = as_records(lines)
    judged = [r for r in records if r.get("verdict") is not None and not is_missing(r.get("verdict"))]
    if not judged:
        has_paper = any(not is_missing(r.get("paper")) for r in records)
        return "no verdict" if has_paper else "no paper values"
    n_ok = sum(bool(r["verdict"]) for r in judged)
    if any(r.get("verdict_kind") == "interval" for r in judged):
        return f"paper inside our interval: {n_ok} of {len(judged)}"
    return f"{n_ok} of {len(judged)} within tolerance"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def comparison_table(
    comparison: pd.DataFrame, metrics: Sequence[str] | None = None, decimals: int = 3
) -> pd.DataFrame:
    """Wide view for reading: one line per table row, per metric our value, the paper's and the difference.

    Per metric the columns are "ours per image (paper)" (the mean over seeds where there are
    several, then a "± 95% CI" column), "paper", "diff", and "ours pixel-pooled" for
    :data:`POOLED_METRICS` where the rows carry it. Then "seeds" (with several seeds), "protocol",
    "stale" (when any row is) and "verdict" (:func:`verdict_text`: counts only where the comparison
    was made with verdicts allowed). By default the metrics are those the paper prints for at least
    one of these rows, then our ``rmse_log`` (so the RMSL caveat is visible next to it).
    """
    if comparison.empty:
        return pd.DataFrame()
    if metrics is None:
        published = set(comparison.loc[comparison["paper"].notna(), "metric"])
        metrics = [m for m in COMPARE_METRICS if m in published] + ["rmse_log"]
    frame = comparison[comparison["metric"].isin(metrics)]
    multi = "n_seeds" in frame and (pd.to_numeric(frame["n_seeds"], errors="coerce") > 1).any()
    has_pooled = "pooled" in frame and pd.to_numeric(frame["pooled"], errors="coerce").notna().any()
    stale = "stale" in frame and frame["stale"].fillna(False).astype(bool).any()
    keys, lines = [], []
    for key, part in comparison.groupby(["table", "dataset", "row_label", "experiment"], sort=False, dropna=False):
        by_metric = {r["metric"]: r for r in as_records(part)}
        line: dict[tuple[str, str], Any] = {}
        for metric in metrics:
            rec = by_metric.get(metric, {})
            label = METRIC_LABELS.get(metric, metric)
            line[(label, f"ours {PER_IMAGE_LABEL}")] = round(_float(rec.get("ours")), decimals)
            if multi:
                line[(label, f"± {CONFIDENCE:.0%} CI")] = round(_float(rec.get("half_width")), decimals)
            line[(label, "paper")] = round(_float(rec.get("paper")), decimals)
            line[(label, "diff")] = round(_float(rec.get("difference")), decimals)
            if has_pooled and metric in POOLED_METRICS:
                line[(label, f"ours {POOLED_LABEL}")] = round(_float(rec.get("pooled")), decimals)
        first = as_records(part)[0]
        if multi:
            line[("seeds", "n")] = first.get("n_seeds")
        line[("protocol", "")] = protocol_text(first)
        if stale:
            line[("stale", "")] = "stale" if first.get("stale") else ""
        line[("verdict", "")] = verdict_text(part)
        keys.append(tuple(str(k) for k in key[:3]))
        lines.append(line)
    table = pd.DataFrame(lines)
    table.index = pd.MultiIndex.from_tuples(keys, names=["table", "dataset", "row"])
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def markdown_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pandas' ``to_markdown`` needs the optional ``tabulate``)."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)
