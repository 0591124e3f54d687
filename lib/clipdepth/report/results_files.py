"""The results files a table notebook leaves: strict JSON values, ``results.csv`` and ``results.md``.

Why a module of its own: :func:`clipdepth.report.session.finish_notebook` decides *what* a notebook
records; this module decides how the comparison with the paper (:mod:`clipdepth.study.comparison`) reads in
a spreadsheet and in Markdown: one line per table row (the mean over seeds), the paper's value and the
difference, the pixel-pooled value, the verdict only where verdicts are allowed (else the reason), and
how each row was produced (protocol, seeds, epochs, subset, stale, the computing commit where it is
not the report's own). Pure functions of the payload: no files are written here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from clipdepth.study.comparison import (
    COMPARE_METRICS,
    CONFIDENCE,
    METRIC_LABELS,
    PER_IMAGE_LABEL,
    POOLED_LABEL,
    POOLED_METRICS,
    TOLERANCE,
    as_records,
    computed_by_text,
    format_mean,
    format_value,
    is_missing,
    markdown_table,
    protocol_text,
    verdict_text,
)

__all__ = ["jsonable", "results_csv", "results_markdown"]


def jsonable(obj: Any) -> Any:
    """Strict-JSON version of ``obj``: NaN/inf become None, numpy scalars and paths plain values."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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


def _table_rows(comparison: pd.DataFrame) -> list[tuple[dict[str, Any], dict[str, dict[str, Any]], pd.DataFrame]]:
    """Comparison lines per table row: (first line, lines by metric, the lines), in row order."""
    out = []
    for _, part in comparison.groupby(["table", "dataset", "row_label", "experiment"], sort=False, dropna=False):
        recs = as_records(part)
        out.append((recs[0], {r["metric"]: r for r in recs}, part))
    return out


def results_csv(records: list[dict[str, Any]], comparison: pd.DataFrame, git: Mapping[str, Any]) -> pd.DataFrame:
    """One line per table row: identity, seeds, provenance, then per metric our value (the mean over
    seeds; ``<metric>_ci95`` its half width with several seeds), ``pooled_<metric>`` (pixel-pooled),
    ``paper_<metric>``, ``diff_<metric>`` where the paper has one and ``verdict_<metric>`` when
    verdicts are drawn. Without a comparison, the rows as they are. Per-seed rows are in results.json.
    """
    if comparison.empty:
        return pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in records])
    published = {m for m in COMPARE_METRICS if comparison.loc[comparison["metric"] == m, "paper"].notna().any()}
    multi = bool((comparison["n_seeds"] > 1).any())
    pooled = {m for m in COMPARE_METRICS if comparison.loc[comparison["metric"] == m, "pooled"].notna().any()}
    judged = comparison["verdict"].notna().any()
    lines = []
    for first, by_metric, _ in _table_rows(comparison):
        line: dict[str, Any] = {
            "experiment": first["experiment"], "table": first["table"], "dataset": first["dataset"],
            "row_label": first["row_label"], "n_seeds": first["n_seeds"],
            "seeds": ";".join(str(x) for x in first["seeds"] if x is not None),
            **{k: first.get(k) for k in ("mode", "bn", "views", "precision", "epochs", "subset_label")},
            "stale": bool(first.get("stale")),
            "computed_by": computed_by_text(first, git).removeprefix("computed by "),
        }
        for metric in COMPARE_METRICS:
            rec = by_metric.get(metric)
            if rec is None:
                continue
            line[metric] = rec["ours"]
            if multi:
                line[f"{metric}_ci95"] = rec["half_width"]
            if metric in pooled:
                line[f"pooled_{metric}"] = rec["pooled"]
            if metric in published:
                line[f"paper_{metric}"] = rec["paper"]
                line[f"diff_{metric}"] = rec["difference"]
                if judged:
                    line[f"verdict_{metric}"] = rec["verdict"]
        lines.append(line)
    frame = pd.DataFrame(lines)
    for column in ("views", "epochs", "n_seeds"):  # whole numbers, not 4.0, with blanks where there is none
        try:
            frame[column] = frame[column].astype("Int64")
        except (TypeError, ValueError):
            pass  # a merged value such as "3/5" (seeds that disagree) stays as text
    return frame


def results_markdown(payload: Mapping[str, Any], comparison: pd.DataFrame) -> str:
    lines = [f"# {payload['notebook']} ({payload['profile']} profile)", ""]
    if payload.get("banner"):
        lines += [f"> **{payload['banner']}**", ""]
    git = payload.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    lines += [
        f"- run: {payload['started_at']} to {payload['finished_at']}, wall time {payload['wall_seconds']:.0f} s",
        f"- git commit: {commit}; weights: {(payload.get('weights') or {}).get('id')}",
        f"- torch {payload['versions'].get('torch')}, open_clip {payload['versions'].get('open_clip_torch')}",
    ]
    if payload.get("subset_label"):
        lines.append(f"- {payload['subset_label']}")
    lines.append("")
    if not comparison.empty:
        stale = [first["row_label"] for first, _, _ in _table_rows(comparison) if first.get("stale")]
        if stale:
            lines += [f"> **stale**: {len(stale)} row(s) reused from runs computed by other code "
                      f"(--allow-stale): {', '.join(str(s) for s in stale)}", ""]
        published = set(comparison.loc[comparison["paper"].notna(), "metric"])
        metrics = [m for m in COMPARE_METRICS if m in published] + ["rmse_log"]
        pooled = [m for m in POOLED_METRICS if comparison.loc[comparison["metric"] == m, "pooled"].notna().any()]
        header = (["table", "dataset", "row"]
                  + [f"{METRIC_LABELS[m]} ours {PER_IMAGE_LABEL}" + (" / paper (diff)" if m in published else "")
                     for m in metrics]
                  + [f"{METRIC_LABELS[m]} ours {POOLED_LABEL}" for m in pooled] + ["verdict"])
        body, provenance = [], []
        for first, by_metric, part in _table_rows(comparison):
            cells = []
            for metric in metrics:
                rec = by_metric[metric]
                ours = format_mean(rec["ours"], rec["half_width"], rec["n_seeds"])
                if is_missing(rec["paper"]):
                    cells.append(ours)
                else:
                    cells.append(f"{ours} / {format_value(rec['paper'])} "
                                 f"({format_value(rec['difference'], signed=True)})")
            cells += [format_value(by_metric[m]["pooled"]) for m in pooled]
            verdict = verdict_text(part)
            body.append([first["table"], first["dataset"], first["row_label"], *cells, verdict])
            provenance.append([first["table"], first["dataset"], first["row_label"], protocol_text(first) or "–",
                               computed_by_text(first, git).removeprefix("computed by ") or "this commit",
                               "stale" if first.get("stale") else ""])
        lines += ["## Ours vs paper", "", markdown_table(header, body), ""]
        lines += [_legend(payload, comparison), "", f"Note: {payload['metric_note']}", ""]
        lines += ["## How each row was produced", "",
                  markdown_table(["table", "dataset", "row", "protocol", "computed by", "stale"], provenance), ""]
    else:
        rows = payload["rows"]
        if rows:
            keys = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list))]
            lines += ["## Rows", "", markdown_table(keys, ([r.get(k, "") for k in keys] for r in rows)), ""]
    lines += ["## Parameters", "", "```json", json.dumps(jsonable(payload["parameters"]), indent=2), "```", ""]
    return "\n".join(lines)


def _legend(payload: Mapping[str, Any], comparison: pd.DataFrame) -> str:
    """What the cells and the verdict column mean for this results file."""
    text = (f"Ours: per-image averages ({PER_IMAGE_LABEL}, the paper's convention); "
            f"{POOLED_LABEL}: over all test pixels together.")
    multi = bool((comparison["n_seeds"] > 1).any())
    if multi:
        text += f" Several seeds: mean ± half width of the {CONFIDENCE:.0%} Student-t interval over seeds."
    if not payload.get("verdicts"):
        return f"**{payload.get('no_verdict') or 'no verdict'}**. {text}"
    rule = (f"within tolerance: |diff| <= max({TOLERANCE['abs']:g}, {TOLERANCE['rel']:.0%} of the paper's value) "
            "(our reproduction criterion)")
    if multi:
        rule += "; with several seeds the verdict is whether the paper's value lies inside our interval instead"
    return f"Verdict: {rule}. {text}"
