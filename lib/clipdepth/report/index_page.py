"""``reports/<profile>/index.html``: one page that says how close every regenerated row is to the paper.

Why a separate writer that reads ``results.json`` files: the index must cover notebooks run in
different invocations (``--only``), notebooks added later (04, 05) and notebooks that failed, and it
must not depend on notebook internals. Each notebook leaves ``<name>/results.json`` (written by
:func:`clipdepth.report.session.finish_notebook`) and ``./run_all.sh`` leaves ``<name>.html`` (the executed
notebook without code) and ``run_all.json`` (statuses and times of the last invocation); this module
joins them into a self-contained HTML page with no external assets.

Scorecard: one line per table row with, for every published metric, our value (per image, the paper's
convention; the mean ± 95 % half width over several seeds), the paper's, the difference and, where
recorded, the pixel-pooled value; then the verdict and how the row was produced (protocol, seeds,
epochs, subset, the computing commit where it is not the page's own, a stale marker). Verdicts (the
green/red cells and the "N of M within tolerance" counts, or with several seeds "paper inside our
interval") are drawn only for results whose ``verdicts`` flag is set (the paper profile on full data,
:func:`clipdepth.study.comparison.verdicts_allowed`); other rows show the differences and say why there is
no verdict. A final check lists every row of paper Tables 3-7 that no results file contains.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipdepth._files import atomic_write_text
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

#: Metrics shown in the scorecard (the paper's columns; RMSL is our log_mse), then our rmse_log.
SCORE_METRICS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "log_mse", "log10", "d1", "d2", "d3")

TABLE_TITLES: dict[str, str] = {
    "t3": "Table 3 (poster Table 1): human words vs learned depth tokens",
    "t4": "Table 4 (poster Table 2): learned context tokens around human depth words",
    "t5": "Table 5 (poster Table 3): learned context and depth tokens",
    "t6": "Table 6: bin spacing (linear vs log)",
    "t7": "Table 7: number of log bins",
    "depthclip": "DepthCLIP zero-shot (Zhang et al. 2022)",
}

#: Tables whose every row must appear somewhere in the reports (the index checks it).
REQUIRED_TABLES: tuple[str, ...] = ("t3", "t4", "t5", "t6", "t7")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em} h3{font-size:1.05em;margin-bottom:.3em}
.banner{background:#fff3cd;border:2px solid #e0a800;color:#5c4400;padding:10px 14px;font-weight:bold;margin:12px 0}
table{border-collapse:collapse;font-size:12px;margin:6px 0 16px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.l,th.l{text-align:left}
td.ok{background:#e3f4e1} td.bad{background:#fbe3e1} td.na{color:#777}
.stale{background:#7a4b00;color:#fff;font-weight:bold;padding:0 4px;border-radius:3px}
.noverdict{color:#5c4400;font-style:italic}
.small{color:#666;font-size:11px} .fail{color:#b00020;font-weight:bold} .pass{color:#1b7c1b;font-weight:bold}
.figs img{max-width:420px;border:1px solid #ddd;margin:4px}
code{background:#f5f5f5;padding:1px 3px}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


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
    """Comparison records grouped by table, then by experiment, keeping the newest results per row.

    Each entry carries its results file's verdict flag and, when verdicts are not allowed, the reason.
    """
    by_experiment: dict[str, dict[str, Any]] = {}
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
            entry["metrics"][rec.get("metric")] = rec if verdicts else {**rec, "verdict": None}
        for name, entry in grouped.items():
            old = by_experiment.get(name)
            if old is None or str(entry["finished_at"] or "") >= str(old["finished_at"] or ""):
                by_experiment[name] = entry
    tables: dict[str, list[dict[str, Any]]] = {}
    order = {name: i for i, name in enumerate(experiments.EXPERIMENTS)}
    for entry in sorted(by_experiment.values(), key=lambda e: (order.get(e["experiment"], 10**6), e["experiment"])):
        tables.setdefault(str(entry["table"]), []).append(entry)
    return tables


def _verdict_of(rec: Mapping[str, Any]) -> bool | None:
    """The verdict of one comparison line; results written before ``verdict`` existed carry only
    ``within_tolerance``."""
    value = rec.get("verdict", rec.get("within_tolerance"))
    return None if value is None else bool(value)


def _metric_cell(rec: Mapping[str, Any] | None, metric: str, verdicts: bool) -> str:
    if not rec:
        return '<td class="na">–</td>'
    ours, paper = _num(rec.get("ours")), _num(rec.get("paper"))
    value = _esc(format_mean(ours, rec.get("half_width"), rec.get("n_seeds")))
    pooled = _num(rec.get("pooled"))
    pooled_html = (f'<br><span class="small pooled">{POOLED_LABEL} {_fmt(pooled)}</span>'
                   if metric in POOLED_METRICS and not math.isnan(pooled) else "")
    if math.isnan(paper):
        return f'<td class="na">{value}<br><span class="small">no paper value</span>{pooled_html}</td>'
    verdict = _verdict_of(rec) if verdicts else None
    css = "" if verdict is None else (' class="ok"' if verdict else ' class="bad"')
    return (f'<td{css}><b>{value}</b><br><span class="small">paper {_fmt(paper)}</span>'
            f'<br><span class="small">diff {_fmt(rec.get("difference"), signed=True)}</span>{pooled_html}</td>')


def _verdict_cell(entry: Mapping[str, Any]) -> str:
    if not entry["verdicts"]:
        reason = str(entry.get("no_verdict") or "no verdict").split(" (", 1)[0]
        return f'<span class="small noverdict">{_esc(reason)}</span>'
    lines = [{**rec, "verdict": _verdict_of(rec)} for m, rec in entry["metrics"].items() if m in SCORE_METRICS]
    text = verdict_text(lines)
    judged = [r for r in lines if r["verdict"] is not None]
    if not judged:
        return f'<span class="small">{_esc(text)}</span>'
    mark = "pass" if all(r["verdict"] for r in judged) else "fail"
    return f'<span class="{mark}">{"yes" if mark == "pass" else "no"}</span> {_esc(text)}'


def _provenance_cell(entry: Mapping[str, Any], page_git: Mapping[str, Any]) -> str:
    first = entry["first"]
    parts = [_esc(protocol_text(first)) or '<span class="small">not recorded</span>']
    commit = computed_by_text(first, page_git)
    if commit:
        parts.append(f'<span class="small commit">{_esc(commit)}</span>')
    if first.get("stale"):
        parts.append('<span class="stale" title="reused from a run of other code (--allow-stale)">'
                     "stale</span>")
    return "<br>".join(parts)


def _scorecard_html(tables: dict[str, list[dict[str, Any]]], page_git: Mapping[str, Any]) -> str:
    parts = []
    order = list(TABLE_TITLES)
    for table, entries in sorted(tables.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else
                                                                 len(order), kv[0])):
        parts.append(f"<h3>{_esc(TABLE_TITLES.get(table, table))}</h3>")
        head = "".join(f"<th>{_esc(METRIC_LABELS.get(m, m))}</th>" for m in SCORE_METRICS)
        parts.append(
            '<table class="scorecard"><tr><th class="l">dataset</th><th class="l">row</th>'
            f'<th class="l">experiment</th>{head}<th>{_esc(METRIC_LABELS["rmse_log"])}</th>'
            '<th>verdict</th><th class="l">protocol</th><th class="l">notebook</th></tr>'
        )
        for e in entries:
            metrics = e["metrics"]
            cells = "".join(_metric_cell(metrics.get(m), m, e["verdicts"]) for m in SCORE_METRICS)
            rmse_log = metrics.get("rmse_log") or {}
            rmse_log_text = _esc(format_mean(rmse_log.get("ours"), rmse_log.get("half_width"),
                                             rmse_log.get("n_seeds")))
            stale = ' data-stale="true"' if e["first"].get("stale") else ""
            parts.append(
                f'<tr data-experiment="{_esc(e["experiment"])}"{stale}><td class="l">{_esc(e["dataset"])}</td>'
                f'<td class="l">{_esc(e["row_label"])}</td><td class="l"><code>{_esc(e["experiment"])}</code></td>'
                f'{cells}<td class="na">{rmse_log_text}</td><td>{_verdict_cell(e)}</td>'
                f'<td class="l">{_provenance_cell(e, page_git)}</td>'
                f'<td class="l"><a href="{_esc(e["notebook"])}.html">{_esc(e["notebook"])}</a></td></tr>'
            )
        parts.append("</table>")
        sources = sorted({src for e in entries if (src := source_for(e["experiment"]))})
        if sources:
            parts.append('<p class="small">Published numbers: ' + "; ".join(_esc(src) for src in sources) + "</p>")
    return "\n".join(parts)


def _legend_html(tables: dict[str, list[dict[str, Any]]]) -> str:
    """What a scorecard cell means, which verdict applies, and why rows without one have none."""
    entries = [e for group in tables.values() for e in group]
    multi = any(_num(rec.get("n_seeds")) > 1 for e in entries for rec in e["metrics"].values())
    judged = any(e["verdicts"] for e in entries)
    text = [f"Each cell: our value, <b>{PER_IMAGE_LABEL}</b> (the mean of per-image metrics, the paper's "
            f"convention and the authors' <code>metrics_ra</code>), the paper's, and the difference (ours - paper); "
            f"where the run recorded it, <b>{POOLED_LABEL}</b> (all test pixels together, the authors' "
            f"<code>metrics</code>) for {_esc(', '.join(METRIC_LABELS[m] for m in POOLED_METRICS))}."]
    if multi:
        text.append(f"Rows run with several seeds show mean &plusmn; half width of the {CONFIDENCE:.0%} Student-t "
                    "interval over seeds (n seeds).")
    if judged:
        text.append(f"Green/red (verdict): within tolerance, |diff| &le; max({TOLERANCE['abs']:g}, "
                    f"{TOLERANCE['rel']:.0%} of the paper's value) (our reproduction criterion)"
                    + ("; for rows with several seeds the verdict is instead whether the paper's value lies "
                       "inside our interval (paper inside our interval)." if multi else "."))
    text.append("The paper's 'RMSL' column is a mean <i>squared</i> log error and is compared with our "
                "<code>log_mse</code>; our true RMSE-log has no published counterpart.")
    out = [f'<p class="small" id="legend">{" ".join(text)}</p>']
    reasons = list(dict.fromkeys(str(e["no_verdict"] or "no verdict") for e in entries if not e["verdicts"]))
    if reasons:
        out.append('<p class="noverdict" id="no-verdict">No verdict drawn for '
                   + ("these rows" if judged else "this report")
                   + ": " + "; ".join(_esc(r) for r in reasons) + ".</p>")
    stale = [e["experiment"] for e in entries if e["first"].get("stale")]
    if stale:
        out.append(f'<p class="fail" id="stale-rows"><span class="stale">stale</span> {len(stale)} row(s) reused '
                   "from runs computed by other code (<code>--allow-stale</code>): "
                   + ", ".join(f"<code>{_esc(n)}</code>" for n in stale) + "</p>")
    return "\n".join(out)


def _notebooks_html(results: list[dict[str, Any]], run: Mapping[str, Any], profile_dir: Path) -> str:
    statuses: dict[str, Mapping[str, Any]] = dict(run.get("notebooks") or {})
    names = list(dict.fromkeys([*statuses, *(r["_dir"] for r in results)]))
    by_name = {r["_dir"]: r for r in results}
    rows = ['<table><tr><th class="l">notebook</th><th class="l">this run</th><th>wall time</th>'
            '<th class="l">results from</th><th class="l">figures</th><th class="l">files</th></tr>']
    for name in sorted(names):
        st = statuses.get(name) or {}
        res = by_name.get(name) or {}
        status = st.get("status")
        if status == "ok":
            status_html = '<span class="pass">ok</span>'
        elif status == "failed":
            status_html = f'<span class="fail">FAILED</span> <span class="small">{_esc(st.get("error", ""))}</span>'
        else:
            status_html = '<span class="small">not run this time</span>'
        seconds = st.get("seconds", res.get("wall_seconds"))
        wall = f"{_num(seconds):.0f} s" if not math.isnan(_num(seconds)) else "–"
        has_page = (profile_dir / f"{name}.html").exists()
        page = f'<a href="{_esc(name)}.html">{_esc(name)}</a>' if has_page else _esc(name)
        figs = " ".join(
            f'<a href="{_esc(name)}/{_esc(f)}">{_esc(Path(f).stem)}</a>' for f in res.get("figures") or []
        )
        files = " ".join(
            f'<a href="{_esc(name)}/{fn}">{fn}</a>' for fn in ("results.json", "results.csv", "results.md")
            if (profile_dir / name / fn).exists()
        )
        if res.get("error"):
            files += f' <span class="fail">{_esc(res["error"])}</span>'
        rows.append(
            f'<tr><td class="l">{page}</td><td class="l">{status_html}</td><td>{wall}</td>'
            f'<td class="l">{_esc(res.get("finished_at", "–"))}</td><td class="l">{figs}</td>'
            f'<td class="l">{files}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def _figures_html(results: list[dict[str, Any]]) -> str:
    parts = []
    for res in results:
        figs = res.get("figures") or []
        if not figs:
            continue
        parts.append(f'<h3><a href="{_esc(res["_dir"])}.html">{_esc(res["_dir"])}</a></h3><div class="figs">')
        parts += [f'<a href="{_esc(res["_dir"])}/{_esc(f)}"><img src="{_esc(res["_dir"])}/{_esc(f)}" '
                  f'alt="{_esc(f)}"></a>' for f in figs]
        parts.append("</div>")
    return "\n".join(parts)


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
    missing = [name for name in expected_rows() if name not in present]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>clipdepth reports: {_esc(profile)}</title><style>{_CSS}</style></head><body>",
        "<h1>Learning to Prompt CLIP for Monocular Depth Estimation: regenerated tables</h1>",
        f"<p>Profile <b>{_esc(profile)}</b>. Auty &amp; Mikolajczyk (2023), paper Tables 3-7, next to our runs.</p>",
    ]
    if banner:
        out.append(f'<div class="banner" id="banner">&#9888; {_esc(banner)}</div>')
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    wall = run.get("wall_seconds")
    vers = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    out += [
        "<h2>Run</h2><ul>",
        f"<li>run date: {_esc(run.get('started_at', '–'))}"
        + (f", finished {_esc(run.get('finished_at'))}" if run.get("finished_at") else "") + "</li>",
        f"<li>total wall time: {_fmt_seconds(wall)}</li>" if wall is not None else "",
        f"<li>command: <code>{_esc(run.get('command', '–'))}</code></li>" if run.get("command") else "",
        f"<li>git commit: <code>{_esc(commit)}</code></li>",
        f"<li>versions: {_esc(vers)}</li>",
        f"<li>platform: {_esc(run.get('platform') or '')}</li>" if run.get("platform") else "",
        "</ul>",
        "<h2>Notebooks</h2>",
        _notebooks_html(results, run, profile_dir),
        "<h2>Scorecard: ours vs paper</h2>",
    ]
    if missing:
        out.append(f'<p class="fail" id="missing-rows">{len(missing)} row(s) of Tables 3-7 have no results yet: '
                   + ", ".join(f"<code>{_esc(m)}</code>" for m in missing) + "</p>")
    else:
        out.append(f'<p class="pass" id="missing-rows">All {len(expected_rows())} rows of Tables 3-7 present.</p>')
    out.append(_legend_html(tables))
    out.append(_scorecard_html(tables, git))
    out += ["<h2>Figures</h2>", _figures_html(results), "</body></html>"]
    return "\n".join(x for x in out if x)


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
