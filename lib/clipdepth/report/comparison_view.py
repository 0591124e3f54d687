"""The comparison with the paper as a reader sees it in HTML: one compact headline view per paper table,
the full table one click away.

Why a module of its own (report layer): the notebook pages (through :func:`show_comparison`, an
object IPython displays) and the index (:mod:`clipdepth.report.index_page`) must show the same headline
view, built the same way, so a number looks the same on both. :mod:`clipdepth.study.comparison` decides the
numbers (``compare_with_paper``) and the full wide table (``comparison_table``); this module only lays
them out:

- **Headline** (:func:`headline_table`, :func:`headline_styler`): per table row, for AbsRel, RMSE,
  δ<1.25 and every other column the paper prints for these rows, three adjacent cells: ours, the
  paper's, Δ = ours - paper. Δ is coloured by sign and size (:func:`difference_style`): red where ours
  is worse than the paper, blue where better, the stronger the larger the difference relative to the
  paper's value. One number per cell, so the eye runs down a column. A pandas Styler, marked
  ``data-view="headline"``, compact enough to fit a 1,280 px window (``tests/test_browser.py``).
- **Full table**: every metric, per image and pixel-pooled, the protocol, the verdict text, in a
  collapsed ``<details>`` whose box scrolls sideways on its own, so the page never does.
- **Reused rows**: a row shown by a notebook other than its table's own (Table 3's learned-7 in
  notebooks 05 and 06) says where its table lives (:func:`home_notebook`).
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from clipdepth.eval.metrics import HIGHER_IS_BETTER
from clipdepth.report._notebooks import home_notebook
from clipdepth.study import experiments
from clipdepth.study.comparison import (
    COMPARE_METRICS,
    CONFIDENCE,
    METRIC_LABELS,
    POOLED_LABEL,
    as_records,
    comparison_table,
    is_missing,
)

__all__ = [
    "FULL_COLOUR_AT",
    "HEADLINE_METRICS",
    "TABLE_TITLES",
    "ComparisonView",
    "TableView",
    "difference_style",
    "headline_styler",
    "headline_table",
    "show_comparison",
    "show_table",
]

#: Metrics every headline shows, printed by the paper or not; the paper's other columns join them.
HEADLINE_METRICS: tuple[str, ...] = ("abs_rel", "rmse", "d1")

#: |Δ| relative to the paper's value at which a difference cell reaches its full colour.
FULL_COLOUR_AT = 0.25

TABLE_TITLES: dict[str, str] = {
    "t3": "Table 3 (poster Table 1): human words vs learned depth tokens",
    "t4": "Table 4 (poster Table 2): learned context tokens around human depth words",
    "t5": "Table 5 (poster Table 3): learned context and depth tokens",
    "t6": "Table 6: bin spacing (linear vs log)",
    "t7": "Table 7: number of log bins",
    "depthclip": "DepthCLIP zero-shot (Zhang et al. 2022)",
    "baselines": "Baselines on our protocol (DepthCLIP metric, CLIP2Depth, LLM-MDE; no published row to compare)",
}

_WORSE_RGB, _BETTER_RGB = (200, 40, 40), (40, 95, 190)

#: Compact cells for the headline (scoped to the table by the Styler's id, so they win over a
#: notebook theme's table padding), and the box of the full table.
_HEADLINE_CSS: list[dict[str, Any]] = [
    {"selector": "", "props": "border-collapse: collapse; font-size: 12px; margin: 4px 0 6px;"},
    {"selector": "th, td", "props": "padding: 2px 4px; border: 1px solid #d8d8d8; white-space: nowrap;"},
    {"selector": "td", "props": "text-align: right; font-variant-numeric: tabular-nums;"},
    {"selector": "thead th", "props": "background: #f3f3f3; text-align: center;"},
    {"selector": "tbody th", "props": "background: #fafafa; text-align: left; font-weight: normal;"},
    {"selector": "td.ok", "props": "background: #e3f4e1;"},
    {"selector": "td.bad", "props": "background: #fbe3e1;"},
]

VIEW_CSS = """
.cmp-view h4{margin:14px 0 2px;font-size:1.02em}
.cmp-view .cmp-note{margin:2px 0;font-size:12px;color:#555}
.cmp-view details{margin:0 0 14px;font-size:12px}
.cmp-view summary{cursor:pointer;color:#0b5cad}
.cmp-view .cmp-scroll{overflow-x:auto;max-width:100%;border:1px solid #e2e2e2}
.cmp-view .cmp-scroll table{border-collapse:collapse;font-size:11px;margin:0}
.cmp-view .cmp-scroll th,.cmp-view .cmp-scroll td{padding:2px 5px;border:1px solid #ddd;white-space:nowrap}
.cmp-legend{font-size:12px;color:#444;max-width:1100px}
.cmp-key{display:inline-block;width:2.2em;height:.9em;vertical-align:middle;border:1px solid #ccc}
"""


def _float(value: Any) -> float:
    return math.nan if is_missing(value) else float(value)


def _label(metric: str) -> str:
    """Headline header: the metric's label with ↓/↑; the paper's "RMSL" under its printed name (the
    legend says it is compared with our ``log_mse``), short enough for two narrow cells."""
    arrow = "↑" if metric in HIGHER_IS_BETTER else "↓"
    return f"{'RMSL' if metric == 'log_mse' else METRIC_LABELS.get(metric, metric)} {arrow}"


def _row_keys(comparison: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """(table, dataset, row) and the lines of each table row, in row order; a row label that two
    experiments share in one table and dataset (other backbones) is told apart by the experiment."""
    groups = list(comparison.groupby(["table", "dataset", "row_label", "experiment"], sort=False, dropna=False))
    seen: dict[tuple[str, str, str], int] = {}
    for key, _ in groups:
        short = tuple(str(k) for k in key[:3])
        seen[short] = seen.get(short, 0) + 1
    out = []
    for key, part in groups:
        table, dataset, row, name = (str(k) for k in key)
        out.append(((table, dataset, row if seen[(table, dataset, row)] == 1 else f"{row} ({name})"), part))
    return out


def headline_metrics(comparison: pd.DataFrame) -> list[str]:
    """:data:`HEADLINE_METRICS` and every metric the paper prints for these lines, in the paper's order."""
    published = set(comparison.loc[comparison["paper"].notna(), "metric"]) if not comparison.empty else set()
    return [m for m in COMPARE_METRICS if m in HEADLINE_METRICS or m in published]


def headline_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """One line per table row (index: table, dataset, row), per metric of :func:`headline_metrics` the
    numeric columns ``(label, "ours")`` (per image, the mean over seeds) and ``(label, "paper")``, and for
    :data:`HEADLINE_METRICS` also ``(label, "Δ")`` (ours - paper); lines with no published value at all get
    the ours columns only. Labels carry ↓/↑ (lower/higher is better).

    Why Δ only for the three: with every column the paper prints (eight in Table 6) three cells per metric
    no longer fit a 1,280 px window; the full table has every difference.
    """
    if comparison.empty:
        return pd.DataFrame()
    metrics = headline_metrics(comparison)
    has_paper = bool(comparison["paper"].notna().any())
    keys, lines = [], []
    for key, part in _row_keys(comparison):
        by_metric = {r["metric"]: r for r in as_records(part)}
        line: dict[tuple[str, str], float] = {}
        for metric in metrics:
            rec = by_metric.get(metric, {})
            line[(_label(metric), "ours")] = _float(rec.get("ours"))
            if not has_paper:  # rows the paper never printed (other backbones, the baselines): ours only
                continue
            line[(_label(metric), "paper")] = _float(rec.get("paper"))
            if metric in HEADLINE_METRICS:
                line[(_label(metric), "Δ")] = _float(rec.get("difference"))
        keys.append(key)
        lines.append(line)
    table = pd.DataFrame(lines)
    table.index = pd.MultiIndex.from_tuples(keys, names=["table", "dataset", "row"])
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def difference_style(difference: Any, paper: Any, higher_is_better: bool) -> str:
    """CSS for a Δ cell: red where ours is worse than the paper, blue where better, the alpha growing
    with |Δ| / |paper| up to :data:`FULL_COLOUR_AT`; no colour for a missing or zero difference."""
    diff, ref = _float(difference), _float(paper)
    if math.isnan(diff) or math.isnan(ref) or diff == 0:
        return ""
    worse = diff < 0 if higher_is_better else diff > 0
    strength = min(abs(diff) / max(abs(ref), 1e-9) / FULL_COLOUR_AT, 1.0)
    alpha = round(0.1 + 0.8 * strength, 2)
    r, g, b = _WORSE_RGB if worse else _BETTER_RGB
    text = "color: #fff;" if alpha >= 0.55 else ""
    return f"background-color: rgba({r}, {g}, {b}, {alpha}); {text}".strip()


def _uuid(*parts: Any) -> str:
    """A stable id for a Styler (its CSS is scoped by it): same content, same page bytes."""
    return "cmp" + hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


def _fmt(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def headline_styler(
    comparison: pd.DataFrame,
    extra: Mapping[str, Sequence[str]] | None = None,
    verdicts: bool = False,
    row_html: Sequence[str] | None = None,
) -> Any:
    """The headline of :func:`headline_table` as a pandas Styler (one paper table at a time reads best).

    Ours shows "mean ±half width" where a row has several seeds; with ``verdicts`` an ours cell is
    green/red by its line's verdict (class ``ok``/``bad``). ``extra`` adds columns of ready HTML after
    the metrics (the index's verdict counts), one string per table row; ``row_html`` replaces the row
    labels by ready HTML (the index's links to each row's notebook), one per table row.
    """
    numbers = headline_table(comparison)
    lines = {key: {r["metric"]: r for r in as_records(part)} for key, part in _row_keys(comparison)}
    metrics = headline_metrics(comparison)
    shown = pd.DataFrame("", index=numbers.index, columns=numbers.columns, dtype=object)
    css = pd.DataFrame("", index=numbers.index, columns=numbers.columns, dtype=object)
    classes = pd.DataFrame("", index=numbers.index, columns=numbers.columns, dtype=object)
    for key in numbers.index:
        for metric in metrics:
            label, rec = _label(metric), lines[key].get(metric, {})
            ours = numbers.loc[key, (label, "ours")]
            text = _fmt(ours)
            if int(_float(rec.get("n_seeds")) if not is_missing(rec.get("n_seeds")) else 1) > 1:
                half = _float(rec.get("half_width"))
                text += "" if math.isnan(half) else f" ±{half:.3f}"
            shown.loc[key, (label, "ours")] = text
            if (label, "paper") not in numbers.columns:
                continue
            shown.loc[key, (label, "paper")] = _fmt(numbers.loc[key, (label, "paper")])
            if metric in HEADLINE_METRICS:
                shown.loc[key, (label, "Δ")] = _fmt(numbers.loc[key, (label, "Δ")], signed=True)
                css.loc[key, (label, "Δ")] = difference_style(rec.get("difference"), rec.get("paper"),
                                                               metric in HIGHER_IS_BETTER)
            verdict = rec.get("verdict") if verdicts else None
            if verdict is not None and not is_missing(verdict):
                classes.loc[key, (label, "ours")] = "ok" if bool(verdict) else "bad"
    for name, cells in (extra or {}).items():
        shown[(name, "")] = list(cells)
        css[(name, "")] = "text-align: left; white-space: normal;"
        classes[(name, "")] = ""
    rows = list(row_html) if row_html is not None else [html.escape(k[2]) for k in shown.index]
    shown.index = pd.MultiIndex.from_tuples([(html.escape(k[1]), r) for k, r in zip(shown.index, rows, strict=True)])
    css.index, classes.index = shown.index, shown.index
    styler = (shown.style.set_uuid(_uuid(shown.to_numpy().tolist(), list(shown.index)))
              .apply(lambda _: css, axis=None)
              .set_td_classes(classes)
              .set_table_styles(_HEADLINE_CSS)
              .set_table_attributes('data-view="headline" class="cmp-headline"'))
    return styler


def _full_html(comparison: pd.DataFrame) -> str:
    full = comparison_table(comparison)
    if full.empty:
        return ""
    full.index = full.index.droplevel("table")
    numeric = [c for c in full.columns if pd.api.types.is_numeric_dtype(full[c])]
    styler = (full.style.set_uuid(_uuid("full", full.to_numpy().tolist()))
              .format("{:.3f}", subset=[c for c in numeric if c[0] != "seeds"], na_rep="–")
              .format_index(escape="html", axis=0)
              .set_table_attributes('data-view="full" class="cmp-full"'))
    return styler.to_html()


def legend_html(verdicts: bool, multi: bool, extra: str = "", element_id: str | None = None) -> str:
    """What a headline cell means; ``multi`` when some row has several seeds; ``extra`` (plain text) is
    appended (the index says there what its full tables add); ``element_id`` names the paragraph."""
    worse = f"rgba({', '.join(map(str, _WORSE_RGB))}, 0.9)"
    better = f"rgba({', '.join(map(str, _BETTER_RGB))}, 0.9)"
    text = ("Ours: the mean of per-image metrics (the paper's convention). "
            f"Δ = ours − paper (for {', '.join(METRIC_LABELS[m] for m in HEADLINE_METRICS)}), coloured by sign "
            "and size: "
            f'<span class="cmp-key" style="background:{worse}"></span> ours worse than the paper, '
            f'<span class="cmp-key" style="background:{better}"></span> ours better; the stronger, the larger '
            f"|Δ| relative to the paper's value (full colour at {FULL_COLOUR_AT:.0%}). "
            "↓ lower is better, ↑ higher is better. RMSL is the paper's column, a mean <i>squared</i> log error, "
            "compared with our <code>log_mse</code>.")
    if multi:
        text += f" Several seeds: mean ±half width of the {CONFIDENCE:.0%} Student-t interval."
    if verdicts:
        text += " Green/red ours cells: the row's verdict on that metric (see the full table)."
    text += f" The full table (every metric, {POOLED_LABEL}, protocol) is one click away under each table."
    if extra:
        text += " " + html.escape(extra)
    ident = f' id="{html.escape(element_id)}"' if element_id else ""
    return f'<p class="cmp-legend"{ident}>{text}</p>'


def _tables_in_order(comparison: pd.DataFrame) -> list[str]:
    order = list(TABLE_TITLES)
    present = list(dict.fromkeys(str(t) for t in comparison["table"]))
    return sorted(present, key=lambda t: (order.index(t) if t in order else len(order), present.index(t)))


@dataclass
class ComparisonView:
    """What a notebook shows of its comparison: per paper table the headline and the collapsed full table.

    ``comparison`` is :func:`clipdepth.study.comparison.compare_with_paper`'s output; ``notebook`` (the
    showing notebook's name) lets rows of another notebook's table say where their table lives.
    IPython displays the object through :meth:`_repr_html_`; ``headline`` and ``full`` are the tables
    as DataFrames.
    """

    comparison: pd.DataFrame
    notebook: str | None = None

    @property
    def headline(self) -> pd.DataFrame:
        return headline_table(self.comparison)

    @property
    def full(self) -> pd.DataFrame:
        return comparison_table(self.comparison)

    def _repr_html_(self) -> str:
        if self.comparison.empty:
            return "<p>No rows to compare with the paper.</p>"
        verdicts = bool(self.comparison["verdict"].notna().any()) if "verdict" in self.comparison else False
        multi = bool((pd.to_numeric(self.comparison.get("n_seeds"), errors="coerce") > 1).any())
        parts = [f"<style>{VIEW_CSS}</style>", '<div class="cmp-view">', legend_html(verdicts, multi)]
        datasets = {name: i for i, name in enumerate(experiments.DATASETS)}
        for table in _tables_in_order(self.comparison):
            part = self.comparison[self.comparison["table"].astype(str) == table]
            part = part.sort_values("dataset", key=lambda d: d.map(datasets).fillna(len(datasets)), kind="stable")
            parts.append(f'<section data-table="{html.escape(table)}">')
            parts.append(f"<h4>{html.escape(TABLE_TITLES.get(table, table))}</h4>")
            home = home_notebook(table)
            if home and self.notebook and home != self.notebook:
                parts.append(f'<p class="cmp-note">These rows belong to {html.escape(TABLE_TITLES.get(table, table))}'
                             f", regenerated by <a href=\"{html.escape(home)}.html\">{html.escape(home)}</a>; "
                             "shown here for comparison (the same runs, reused).</p>")
            parts.append(headline_styler(part, verdicts=verdicts).to_html())
            parts.append("<details><summary>Full table: every metric, per image and pixel-pooled, protocol, "
                         f'verdict</summary><div class="cmp-scroll">{_full_html(part)}</div></details>')
            parts.append("</section>")
        parts.append("</div>")
        return "\n".join(parts)


def show_comparison(comparison: pd.DataFrame, notebook: Any = None) -> ComparisonView:
    """The comparison as a notebook shows it (see :class:`ComparisonView`); ``notebook`` is the notebook's
    name or its :class:`clipdepth.report.session.NotebookContext`."""
    name = getattr(notebook, "name", notebook)
    return ComparisonView(comparison, None if name is None else str(name))


@dataclass
class TableView:
    """Any wide results table shown as a headline (some columns, no integer index) and the full table
    one click away; IPython displays it through :meth:`_repr_html_`."""

    table: pd.DataFrame
    index: Sequence[str]
    headline: Sequence[str]
    title: str = "Full table"
    decimals: int = 3

    def _styler(self, frame: pd.DataFrame, kind: str) -> Any:
        numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
        text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        styler = (frame.style.set_uuid(_uuid(kind, frame.to_numpy().tolist(), list(frame.index)))
                  .format(f"{{:.{self.decimals}f}}", subset=numeric, na_rep="–")
                  .format(escape="html", subset=text, na_rep="–")
                  .format_index(escape="html", axis=0)
                  .set_table_attributes(f'data-view="{kind}" class="cmp-{kind}"'))
        if kind == "headline":  # text columns (a status, a reason) wrap, left-aligned, instead of widening it
            styler = styler.set_table_styles(_HEADLINE_CSS).set_table_styles(
                {c: [{"selector": "td", "props": "white-space: normal; text-align: left; min-width: 8em;"}]
                 for c in text}, overwrite=False)
        return styler

    def _repr_html_(self) -> str:
        indexed = self.table.set_index(list(self.index))
        head = self._styler(indexed[list(self.headline)], "headline")
        full = self._styler(indexed, "full")
        return (f'<style>{VIEW_CSS}</style><div class="cmp-view">{head.to_html()}'
                f"<details><summary>{html.escape(self.title)}</summary>"
                f'<div class="cmp-scroll">{full.to_html()}</div></details></div>')


def show_table(table: pd.DataFrame, index: Sequence[str], headline: Sequence[str],
               title: str = "Full table: every column") -> TableView:
    """Show ``table`` indexed by the ``index`` columns with only the ``headline`` columns, and the
    whole table in a collapsed box (notebook 06's backbone summary)."""
    missing = [c for c in (*index, *headline) if c not in table.columns]
    if missing:
        raise ValueError(f"show_table: no column(s) {missing}; the table has {list(table.columns)}")
    return TableView(table, list(index), list(headline), title)
