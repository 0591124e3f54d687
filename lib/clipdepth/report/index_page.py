"""``reports/<profile>/index.html``: one page that says how close every regenerated row is to the paper.

Why a separate writer that reads ``results.json`` files: the index must cover notebooks run in
different invocations (``--only``), notebooks added later (04, 05) and notebooks that failed, and it
must not depend on notebook internals. Each notebook leaves ``<name>/results.json`` (written by
:func:`clipdepth.report.session.finish_notebook`) and ``./run_all.sh`` leaves ``<name>.html`` (the executed
notebook without code) and ``run_all.json`` (statuses and times of the last invocation); this module
joins them into a self-contained HTML page with no external assets. The page is the jinja2 template
``templates/index.html.j2`` (shipped as package data); this module only gathers what it shows.

Scorecard, per paper table: the headline view of :mod:`clipdepth.report.comparison_view` (ours, the paper's
and the coloured difference side by side, one number per cell; each row label links to the notebook
of the row's own table, and the notebooks that reuse the row are named), then, collapsed, the full
table: per metric our value (per image, the paper's convention; the mean ± 95 % half width over
several seeds), the paper's, the difference and, where recorded, the pixel-pooled value; the verdict
and how the row was produced (protocol, seeds, epochs, subset, the computing commit where it is not
the page's own, a stale marker). Verdicts (green/red cells and the "N of M within tolerance" counts,
or with several seeds "paper inside our interval") are drawn only for results whose ``verdicts``
flag is set (the paper profile on full data, :func:`clipdepth.study.comparison.verdicts_allowed`); other
rows show the differences and say why there is no verdict. A final check lists every row of paper
Tables 3-7 that no results file contains.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from clipdepth._files import atomic_write_text
from clipdepth.report._notebooks import home_notebook
from clipdepth.report.comparison_view import TABLE_TITLES, VIEW_CSS, headline_styler, legend_html
from clipdepth.study import experiments
from clipdepth.study.comparison import (
    CONFIDENCE,
    METRIC_LABELS,
    PER_IMAGE_LABEL,
    POOLED_LABEL,
    POOLED_METRICS,
    TOLERANCE,
    computed_by_text,
    format_mean,
    no_verdict_note,
    protocol_text,
    verdict_text,
    verdicts_allowed,
)
from clipdepth.study.reference import source_for

__all__ = ["SCORE_METRICS", "TABLE_TITLES", "collect_results", "expected_rows", "render_index", "write_index"]

#: Metrics of the full scorecard tables (the paper's columns; RMSL is our log_mse), then our rmse_log.
SCORE_METRICS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "log_mse", "log10", "d1", "d2", "d3")

#: Tables whose every row must appear somewhere in the reports (the index checks it).
REQUIRED_TABLES: tuple[str, ...] = ("t3", "t4", "t5", "t6", "t7")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1220px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em} h3{font-size:1.05em;margin:1.2em 0 .2em}
.banner{background:#fff3cd;border:2px solid #e0a800;color:#5c4400;padding:10px 14px;font-weight:bold;margin:12px 0}
table.plain,table.scorecard-full{border-collapse:collapse;font-size:12px;margin:6px 0 16px}
table.plain th,table.plain td,table.scorecard-full th,table.scorecard-full td{border:1px solid #ccc;padding:2px 5px;
text-align:right;vertical-align:top}
table.plain th,table.scorecard-full th{background:#f3f3f3} td.l,th.l{text-align:left}
table.scorecard-full td{white-space:nowrap}
td.ok{background:#e3f4e1} td.bad{background:#fbe3e1} td.na{color:#777}
.cmp-headline a{color:#0b5cad;text-decoration:none} .cmp-headline a:hover{text-decoration:underline}
.stale{background:#7a4b00;color:#fff;font-weight:bold;padding:0 4px;border-radius:3px}
.noverdict{color:#5c4400;font-style:italic}
.small{color:#666;font-size:11px} .fail{color:#b00020;font-weight:bold} .pass{color:#1b7c1b;font-weight:bold}
.v-pass{color:#1b7c1b} .v-fail{color:#b00020;font-weight:bold}
.figs img{max-width:380px;border:1px solid #ddd;margin:4px}
code{background:#f5f5f5;padding:1px 3px}
"""


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _fmt(value: Any, signed: bool = False) -> str:
    v = _num(value)
    if math.isnan(v):
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def collect_results(profile_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every ``<notebook>/results.json`` under ``profile_dir``, sorted by notebook name.

    Unreadable files are returned as ``{"notebook": ..., "error": ...}`` so the index shows them
    rather than silently dropping a notebook.
    """
    out = []
    for path in sorted(Path(profile_dir).glob("*/results.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            data = {"notebook": path.parent.name, "error": f"unreadable results.json: {exc}"}
        data.setdefault("notebook", path.parent.name)
        data["_dir"] = path.parent.name
        out.append(data)
    return out


def expected_rows(tables: tuple[str, ...] = REQUIRED_TABLES) -> list[str]:
    """Registry names of every row of the given paper tables (both datasets), in paper order."""
    return [exp.name for t in tables for exp in experiments.select(table=t)]


def _results_verdicts(res: Mapping[str, Any]) -> bool:
    """A results file's ``verdicts`` flag; for files written before it existed, decided from its profile
    and ``subset`` parameter the same way (so an old demo file never shows green)."""
    if "verdicts" in res:
        return bool(res["verdicts"])
    return verdicts_allowed(res.get("profile"), (res.get("parameters") or {}).get("subset"))


def _scorecard_rows(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Comparison records grouped by table, then by experiment, one entry per table row.

    A row shown by several notebooks (Table 3's learned-7 in 01, 05 and 06) is taken from the notebook
    of its own table (:func:`clipdepth.report._notebooks.home_notebook`) when that notebook's results are
    here, else from the newest results file; ``also_in`` lists the other notebooks that show it. Each
    entry carries its results file's verdict flag and, when verdicts are not allowed, the reason.
    """
    candidates: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        verdicts = _results_verdicts(res)
        grouped: dict[str, dict[str, Any]] = {}
        for rec in res.get("comparison") or []:
            name = rec.get("experiment")
            if not name:
                continue
            entry = grouped.setdefault(name, {
                "experiment": name, "table": rec.get("table"), "dataset": rec.get("dataset"),
                "row_label": rec.get("row_label"), "notebook": res["_dir"], "finished_at": res.get("finished_at"),
                "verdicts": verdicts, "metrics": {}, "first": rec,
                "no_verdict": None if verdicts else (
                    res.get("no_verdict") or no_verdict_note(res.get("profile"),
                                                             (res.get("parameters") or {}).get("subset"),
                                                             rec.get("subset_label"))),
            })
            entry["metrics"][rec.get("metric")] = {**rec, "verdict": _verdict_of(rec) if verdicts else None}
        for name, entry in grouped.items():
            candidates.setdefault(name, []).append(entry)
    tables: dict[str, list[dict[str, Any]]] = {}
    order = {name: i for i, name in enumerate(experiments.EXPERIMENTS)}
    datasets = {name: i for i, name in enumerate(experiments.DATASETS)}
    chosen = []
    for name, found in candidates.items():
        home = home_notebook(str(found[0]["table"]))
        own = [e for e in found if e["notebook"] == home]
        entry = own[0] if own else max(found, key=lambda e: str(e["finished_at"] or ""))
        entry["also_in"] = sorted({e["notebook"] for e in found} - {entry["notebook"]})
        if str(entry["table"]) in REQUIRED_TABLES and name not in order:  # e.g. 06's rows on other backbones
            entry["table"], entry["row_label"] = f"{entry['table']}{VARIANTS}", name.split("/", 2)[-1]
        chosen.append(entry)
    for entry in sorted(chosen, key=lambda e: (order.get(e["experiment"], 10**6), datasets.get(e["dataset"], 9),
                                               e["experiment"])):
        tables.setdefault(str(entry["table"]), []).append(entry)
    return tables


#: Suffix of the scorecard section that holds a paper table's rows run with other settings (backbones):
#: they have no published numbers and would otherwise sit among the paper's rows under the same labels.
VARIANTS = "-variants"


def _table_title(table: str) -> str:
    if table.endswith(VARIANTS):
        base = table.removesuffix(VARIANTS)
        return f"{TABLE_TITLES.get(base, base)}: the same rows with other settings (no published numbers)"
    return TABLE_TITLES.get(table, table)


def _verdict_of(rec: Mapping[str, Any]) -> bool | None:
    """The verdict of one comparison line; results written before ``verdict`` existed carry only
    ``within_tolerance``."""
    value = rec.get("verdict", rec.get("within_tolerance"))
    return None if value is None else bool(value)


def _detail_cell(rec: Mapping[str, Any] | None, metric: str, verdicts: bool, pooled: bool) -> dict[str, Any]:
    """One metric of the full table: ours (mean ± CI over seeds), the paper's, the difference, pooled."""
    if not rec:
        return {"ours": "–", "paper": "–", "diff": "–", "css": "na", "pooled": "–" if pooled else None}
    verdict = _verdict_of(rec) if verdicts and not math.isnan(_num(rec.get("paper"))) else None
    return {
        "ours": format_mean(rec.get("ours"), rec.get("half_width"), rec.get("n_seeds")),
        "paper": _fmt(rec.get("paper")),
        "diff": _fmt(rec.get("difference"), signed=True),
        "css": "" if verdict is None else ("ok" if verdict else "bad"),
        "pooled": _fmt(rec.get("pooled")) if pooled else None,
    }


def _detail_row(entry: Mapping[str, Any], metrics: list[str], pooled: set[str], page_git: Mapping[str, Any],
                ) -> dict[str, Any]:
    """One line of a table's full scorecard (see the template)."""
    first, recs = entry["first"], entry["metrics"]
    lines = [rec for m, rec in recs.items() if m in SCORE_METRICS]
    judged = [r for r in lines if r["verdict"] is not None]
    rmse_log = recs.get("rmse_log") or {}
    return {
        "experiment": entry["experiment"], "dataset": entry["dataset"], "row_label": entry["row_label"],
        "stale": bool(first.get("stale")),
        "cells": [_detail_cell(recs.get(m), m, entry["verdicts"], m in pooled) for m in metrics],
        "rmse_log": format_mean(rmse_log.get("ours"), rmse_log.get("half_width"), rmse_log.get("n_seeds")),
        "verdict": verdict_text(lines),
        "verdict_mark": ("pass" if all(r["verdict"] for r in judged) else "fail") if judged else None,
        "no_verdict": None if entry["verdicts"] else str(entry.get("no_verdict") or "no verdict").split(" (", 1)[0],
        "protocol": protocol_text(first), "commit": computed_by_text(first, page_git),
        "notebook": entry["notebook"], "also_in": entry.get("also_in") or [],
    }


def _headline_html(entries: list[dict[str, Any]]) -> str:
    """The table's headline view (:func:`clipdepth.report.comparison_view.headline_styler`), each row label a
    link to the notebook that regenerates it, and a verdict column where verdicts are drawn."""
    lines = [{**rec, "table": e["table"], "row_label": e["row_label"]}
             for e in entries for rec in e["metrics"].values()]
    comparison = pd.DataFrame(lines)
    verdicts = any(e["verdicts"] for e in entries)
    extra = None
    if verdicts:
        cells = []
        for e in entries:
            judged = [r for m, r in e["metrics"].items() if m in SCORE_METRICS and r["verdict"] is not None]
            ok = sum(bool(r["verdict"]) for r in judged)
            css = "v-pass" if judged and ok == len(judged) else "v-fail"
            cells.append(f'<span class="{css}">{ok} of {len(judged)}</span>' if judged else "–")
        extra = {"verdict": cells}
    links = [f'<a href="{html.escape(e["notebook"])}.html" title="{html.escape(e["experiment"])}: '
             f'{html.escape(e["notebook"])}">{html.escape(str(e["row_label"]))}</a>' for e in entries]
    return headline_styler(comparison, extra=extra, verdicts=verdicts, row_html=links).to_html()


def _table_view(table: str, entries: list[dict[str, Any]], page_git: Mapping[str, Any]) -> dict[str, Any]:
    """What the template shows of one paper table: title, notebooks, headline HTML, full-table rows."""
    present = {m for e in entries for m, rec in e["metrics"].items() if not math.isnan(_num(rec.get("ours")))}
    metrics = [m for m in SCORE_METRICS if m in present]
    pooled = {m for m in POOLED_METRICS
              if any(not math.isnan(_num((e["metrics"].get(m) or {}).get("pooled"))) for e in entries)}
    homes = list(dict.fromkeys(e["notebook"] for e in entries))
    reused = sorted({nb for e in entries for nb in e.get("also_in") or []} - set(homes))
    return {
        "id": table, "title": _table_title(table), "homes": homes, "reused_in": reused,
        "headline": Markup(_headline_html(entries)),
        "metrics": [{"label": METRIC_LABELS.get(m, m), "span": 4 if m in pooled else 3, "pooled": m in pooled}
                    for m in metrics],
        "rows": [_detail_row(e, metrics, pooled, page_git) for e in entries],
        "sources": sorted({src for e in entries if (src := source_for(e["experiment"]))}),
    }


def _legend(tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The legend of the headline views, what the full tables add, and why rows have no verdict."""
    entries = [e for group in tables.values() for e in group]
    multi = any(_num(rec.get("n_seeds")) > 1 for e in entries for rec in e["metrics"].values())
    judged = any(e["verdicts"] for e in entries)
    extra = [f"Full tables: per metric ours ({PER_IMAGE_LABEL}), the paper's, the difference and, where the run "
             f"recorded it, {POOLED_LABEL} (all test pixels together, the authors' metrics) for "
             f"{', '.join(METRIC_LABELS[m] for m in POOLED_METRICS)}; our true RMSE-log has no published counterpart."]
    if judged:
        extra.append(f"Verdict: within tolerance, |diff| <= max({TOLERANCE['abs']:g}, {TOLERANCE['rel']:.0%} of "
                     "the paper's value) (our reproduction criterion)"
                     + ("; for rows with several seeds the verdict is instead whether the paper's value lies "
                        "inside our interval (paper inside our interval)." if multi else "."))
    if multi:
        extra.append(f"Rows run with several seeds show mean ± half width of the {CONFIDENCE:.0%} Student-t "
                     "interval over seeds (n seeds).")
    return {
        "legend": Markup(legend_html(judged, multi, " ".join(extra), element_id="legend")),
        "judged": judged,
        "no_verdict": list(dict.fromkeys(str(e["no_verdict"] or "no verdict") for e in entries if not e["verdicts"])),
        "stale": [e["experiment"] for e in entries if e["first"].get("stale")],
    }


def _notebooks(results: list[dict[str, Any]], run: Mapping[str, Any], profile_dir: Path) -> list[dict[str, Any]]:
    statuses: dict[str, Mapping[str, Any]] = dict(run.get("notebooks") or {})
    names = list(dict.fromkeys([*statuses, *(r["_dir"] for r in results)]))
    by_name = {r["_dir"]: r for r in results}
    out = []
    for name in sorted(names):
        st = statuses.get(name) or {}
        res = by_name.get(name) or {}
        seconds = _num(st.get("seconds", res.get("wall_seconds")))
        out.append({
            "name": name, "page": (profile_dir / f"{name}.html").exists(), "status": st.get("status"),
            "error": st.get("error", ""), "wall": "–" if math.isnan(seconds) else f"{seconds:.0f} s",
            "finished_at": res.get("finished_at", "–"),
            "figures": [(f"{name}/{f}", Path(f).stem) for f in res.get("figures") or []],
            "files": [(f"{name}/{fn}", fn) for fn in ("results.json", "results.csv", "results.md")
                      if (profile_dir / name / fn).exists()],
            "results_error": res.get("error"),
        })
    return out


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("clipdepth.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def render_index(profile_dir: str | os.PathLike[str], run: Mapping[str, Any] | None = None) -> str:
    """The index page as a string (see module docstring); ``run`` defaults to ``run_all.json``."""
    profile_dir = Path(profile_dir)
    if run is None:
        run_file = profile_dir / "run_all.json"
        run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    results = collect_results(profile_dir)
    profile = run.get("profile") or next((r.get("profile") for r in results if r.get("profile")), profile_dir.name)
    banner = run.get("banner")
    if banner is None and profile in experiments.PROFILES:
        banner = experiments.PROFILES[profile].banner
    versions = run.get("versions") or next((r.get("versions") for r in results if r.get("versions")), {})
    git = run.get("git") or next((r.get("git") for r in results if r.get("git")), {}) or {}
    tables = _scorecard_rows(results)
    present = {e["experiment"] for entries in tables.values() for e in entries}
    order = list(TABLE_TITLES)

    def rank(table: str) -> tuple[float, str]:
        base = table.removesuffix(VARIANTS)
        return (order.index(base) if base in order else len(order)) + (0.5 if table != base else 0), table

    ordered = sorted(tables.items(), key=lambda kv: rank(kv[0]))
    wall = run.get("wall_seconds")
    context = {
        "css": _CSS, "view_css": VIEW_CSS, "profile": profile, "banner": banner,
        "run": {
            "started_at": run.get("started_at"), "finished_at": run.get("finished_at"),
            "wall": _fmt_seconds(wall) if wall is not None else None, "command": run.get("command"),
            "commit": (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else ""),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v), "platform": run.get("platform"),
        },
        "notebooks": _notebooks(results, run, profile_dir),
        "missing": [name for name in expected_rows() if name not in present], "n_expected": len(expected_rows()),
        **_legend(tables),
        "tables": [_table_view(table, entries, git) for table, entries in ordered],
        "rmse_log_label": METRIC_LABELS["rmse_log"], "pooled_label": POOLED_LABEL,
        "figures": [{"name": r["_dir"], "page": (profile_dir / f"{r['_dir']}.html").exists(),
                     "images": [f"{r['_dir']}/{f}" for f in r.get("figures") or []]}
                    for r in results if r.get("figures")],
    }
    return _environment().get_template("index.html.j2").render(**context)


def _fmt_seconds(value: Any) -> str:
    v = _num(value)
    if math.isnan(v):
        return "–"
    minutes, seconds = divmod(int(round(v)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def write_index(profile_dir: str | os.PathLike[str], run: Mapping[str, Any] | None = None) -> Path:
    """Write ``<profile_dir>/index.html`` and return its path."""
    profile_dir = Path(profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    path = profile_dir / "index.html"
    return atomic_write_text(path, render_index(profile_dir, run))
