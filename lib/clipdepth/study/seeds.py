"""Notebook steps of the seed study: per-row mean and CI over seeds, the paper's claims tested, a forest plot.

Why: the paper reports one seed (42) per row, yet several of its conclusions rest on differences of
0.002-0.02 AbsRel. These steps take the result rows of a multi-seed run (one dict per experiment and
seed, as the notebooks produce them: ``experiment``, ``seed``, the metrics, and ``per_image``, a list
of per-image metric dicts in the same test-image order for every row) and answer two questions:

1. :func:`seed_table`: per experiment, the mean over seeds with a Student-t 95 % interval, beside the
   paper's single number, and whether that number lies inside our interval.
2. :func:`claims_table`: per claim of :func:`clipdepth.study.reference.load_claims`, the paired per-seed
   difference (better minus worse, same seed, same test images) with its interval, a paired
   bootstrap over test images for one seed, and whether the difference exceeds seed noise.

Verdicts (yes/no) are only drawn when the caller says the run can support them (``verdicts=True``:
paper profile on full data, DESIGN 5b); otherwise the verdict columns say so in words. The formulas
are in :mod:`clipdepth.study.stats`. No training here: this module only reads rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from clipdepth.study import experiments
from clipdepth.study.reference import reference_for
from clipdepth.study.reference.claims import Claim, load_claims
from clipdepth.study.stats import (
    TInterval,
    exceeds_noise,
    paired_bootstrap,
    paired_differences,
    t_interval,
    values_by_seed,
)

__all__ = [
    "CLAIM_COLUMNS",
    "DEFAULT_METRICS",
    "NA_DEMO",
    "claims_table",
    "display_claims_table",
    "display_seed_table",
    "forest_plot",
    "results_extra",
    "seed_table",
]

#: Metrics summarised by default (the paper's headline columns).
DEFAULT_METRICS: tuple[str, ...] = ("abs_rel", "rmse", "d1")

#: Verdict text when the run cannot support a verdict (demo profile or a data subset).
NA_DEMO = "n/a (demo)"

#: Seed whose test images the bootstrap uses when present (the authors' seed).
AUTHORS_SEED = 42

CLAIM_COLUMNS: tuple[str, ...] = (
    "id", "claim", "table", "dataset", "metric", "better", "worse", "claimed_sign", "paper_delta",
    "better_row", "worse_row", "n_seeds", "seeds", "ours_mean", "ours_low", "ours_high", "ours_half_width",
    "bootstrap_seed", "bootstrap_observed", "bootstrap_low", "bootstrap_high", "n_images", "n_resamples",
    "exceeds_seed_noise",
)


def _rows(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict(orient="records")
    return [dict(r) for r in rows]


def _identity(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """table/dataset/row_label of an experiment: from its rows, else from the registry."""
    first = next(r for r in rows if r.get("experiment") == name)
    exp = experiments.EXPERIMENTS.get(name)
    return {
        "table": first.get("table", exp.table if exp else None),
        "dataset": first.get("dataset", exp.dataset if exp else None),
        "row_label": first.get("row_label", exp.row_label if exp else name),
    }


def _verdict(ok: bool, verdicts: bool, n: int, na_text: str) -> str:
    if not verdicts:
        return na_text
    if n < 2:
        return "n/a (1 seed)"
    return "yes" if ok else "no"


def seed_table(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    verdicts: bool = False,
    confidence: float = 0.95,
    na_text: str = NA_DEMO,
) -> pd.DataFrame:
    """One line per experiment: seeds, and per metric the mean over seeds, its t interval and the paper's value.

    Columns: ``experiment, table, dataset, row_label, n_seeds, seeds``, then for each metric m:
    ``m_mean, m_low, m_high, m_half_width`` (:func:`clipdepth.study.stats.t_interval`: mean +- t_{0.975, n-1}
    * s / sqrt(n)), ``m_paper`` (:func:`clipdepth.study.reference.reference_for`, NaN where the paper has no
    such number) and ``m_paper_in_ci``: "yes"/"no" (low <= paper <= high), "n/a (1 seed)",
    "n/a (no paper value)", or ``na_text`` when ``verdicts`` is False (demo profile or a subset, where
    the comparison means nothing). Note the paper's number is itself one seed's draw; "no" says it is
    outside the interval of our *mean*, not that it is impossible under our seed spread.
    """
    rows = _rows(rows)
    names = list(dict.fromkeys(str(r.get("experiment")) for r in rows))
    out = []
    for name in names:
        paper = reference_for(name) if name in experiments.EXPERIMENTS else None
        seeds = sorted(values_by_seed(rows, name, metrics[0]) if metrics else ())
        line: dict[str, Any] = {"experiment": name, **_identity(rows, name), "n_seeds": len(seeds),
                                "seeds": tuple(seeds)}
        for metric in metrics:
            values = [v for _, v in sorted(values_by_seed(rows, name, metric).items()) if not math.isnan(v)]
            ci = t_interval(values, confidence) if values else TInterval(math.nan, math.nan, math.nan, math.nan, 0)
            ref = float((paper or {}).get(metric, math.nan))
            if math.isnan(ref):
                verdict = "n/a (no paper value)" if verdicts else na_text
            else:
                verdict = _verdict(ci.low <= ref <= ci.high, verdicts, ci.n, na_text)
            line.update({f"{metric}_mean": ci.mean, f"{metric}_low": ci.low, f"{metric}_high": ci.high,
                         f"{metric}_half_width": ci.half_width, f"{metric}_paper": ref,
                         f"{metric}_paper_in_ci": verdict})
        out.append(line)
    columns = ["experiment", "table", "dataset", "row_label", "n_seeds", "seeds"] + [
        f"{m}_{part}" for m in metrics for part in ("mean", "low", "high", "half_width", "paper", "paper_in_ci")]
    return pd.DataFrame(out, columns=columns)


def _fmt(value: float, decimals: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def _fmt_ci(mean: float, low: float, high: float, decimals: int) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(low):
        return f"{mean:.{decimals}f} (1 seed)"
    return f"{mean:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def display_seed_table(table: pd.DataFrame, metrics: Sequence[str] | None = None, decimals: int = 3) -> pd.DataFrame:
    """Readable view of :func:`seed_table`: per metric "mean ± half-width", the paper value, the verdict."""
    if metrics is None:
        metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    out = pd.DataFrame({"row": table["experiment"], "seeds": table["n_seeds"]})
    for m in metrics:
        mean, half = table[f"{m}_mean"], table[f"{m}_half_width"]
        out[f"{m} (mean ± CI)"] = [
            "–" if math.isnan(a) else (f"{a:.{decimals}f}" if math.isnan(h) else f"{a:.{decimals}f} ± {h:.{decimals}f}")
            for a, h in zip(mean, half, strict=True)]
        out[f"{m} paper"] = [_fmt(v, decimals) for v in table[f"{m}_paper"]]
        out[f"{m} paper in CI?"] = table[f"{m}_paper_in_ci"]
    return out


def _rows_of(rows: list[dict[str, Any]], name: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The rows of experiment ``name``, or of a registry row with the same method (e.g. Table 6
    "7, Linear" is Table 3 learned-7, trained once); None when neither was run."""
    present = list(dict.fromkeys(str(r.get("experiment")) for r in rows))
    if name in present:
        return name, [r for r in rows if r.get("experiment") == name]
    if name in experiments.EXPERIMENTS:
        aliases = set(experiments.same_method(name))
        for other in present:
            if other in aliases:
                return other, [r for r in rows if r.get("experiment") == other]
    return None


def _per_image(row: Mapping[str, Any], metric: str) -> np.ndarray | None:
    """One metric per test image from ``row["per_image"]`` (a list of metric dicts, or metric -> list)."""
    per_image = row.get("per_image")
    if per_image is None:
        return None
    if isinstance(per_image, Mapping):
        values = per_image.get(metric)
        return None if values is None else np.asarray(values, dtype=np.float64)
    return np.asarray([float(image[metric]) for image in per_image], dtype=np.float64)


def _bootstrap_seed(better_rows: list[dict[str, Any]], seeds: Sequence[int], preferred: int) -> int:
    if preferred in seeds:
        return preferred
    for row in better_rows:  # the first seed the run produced
        if int(row["seed"]) in seeds:
            return int(row["seed"])
    return seeds[0]


def claims_table(
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    claims: Sequence[Claim] | None = None,
    verdicts: bool = False,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    bootstrap_rng_seed: int = 0,
    preferred_seed: int = AUTHORS_SEED,
    na_text: str = NA_DEMO,
) -> pd.DataFrame:
    """Test each claim against our rows: paired difference over seeds and a bootstrap over test images.

    For a claim "better beats worse on metric" with both rows run (a row with the same method counts,
    see :func:`clipdepth.study.experiments.same_method`; claims whose rows were not run are left out):

    - ``ours_*``: d_s = metric(better, seed s) - metric(worse, seed s) for every seed s (both rows must
      have the same seeds), summarised by :func:`clipdepth.study.stats.t_interval` (``ours_mean`` and the
      bounds; NaN bounds with one seed).
    - ``bootstrap_*``: :func:`clipdepth.study.stats.paired_bootstrap` of the per-image metric on seed
      ``preferred_seed`` (42, the authors') or else the first seed run, ``n_resamples`` resamples drawn
      with ``np.random.default_rng(bootstrap_rng_seed)``; NaN when a row has no ``per_image``.
    - ``exceeds_seed_noise``: "yes" when the seed interval lies entirely on the claimed side of zero
      (:func:`clipdepth.study.stats.exceeds_noise`), "no (reversed)" when it lies entirely on the other
      side, "no" when it contains zero; "n/a (1 seed)" with a single seed, and ``na_text`` when
      ``verdicts`` is False (demo or subset).

    ``paper_delta`` is the published difference in the same orientation (better minus worse).
    """
    rows = _rows(rows)
    claims = list(load_claims() if claims is None else claims)
    out = []
    for claim in claims:
        better, worse = _rows_of(rows, claim.better), _rows_of(rows, claim.worse)
        if better is None or worse is None:
            continue
        (better_name, better_rows), (worse_name, worse_rows) = better, worse
        try:
            diffs = paired_differences(values_by_seed(better_rows, better_name, claim.metric),
                                       values_by_seed(worse_rows, worse_name, claim.metric))
        except ValueError as err:
            raise ValueError(f"claim {claim.id} ({better_name} vs {worse_name}): {err}") from None
        finite = [v for v in diffs.values() if not math.isnan(v)]
        if not finite:
            raise ValueError(f"claim {claim.id}: no {claim.metric} in the rows of {better_name} / {worse_name}")
        ci = t_interval(finite, confidence)
        seeds = list(diffs)
        boot_seed = _bootstrap_seed(better_rows, seeds, preferred_seed)
        a = _per_image(next(r for r in better_rows if int(r["seed"]) == boot_seed), claim.metric)
        b = _per_image(next(r for r in worse_rows if int(r["seed"]) == boot_seed), claim.metric)
        if a is None or b is None:
            boot = (math.nan, math.nan, math.nan, 0)
        else:
            try:
                res = paired_bootstrap(a, b, n_resamples, bootstrap_rng_seed, confidence)
            except ValueError as err:
                raise ValueError(f"claim {claim.id}, seed {boot_seed}: {err}") from None
            boot = (res.observed, res.low, res.high, res.n_images)
        if not verdicts:
            verdict = na_text
        elif ci.n < 2:
            verdict = "n/a (1 seed)"
        elif exceeds_noise(ci.low, ci.high, claim.claimed_sign):
            verdict = "yes"
        elif exceeds_noise(ci.low, ci.high, -claim.claimed_sign):
            verdict = "no (reversed)"
        else:
            verdict = "no"
        out.append({
            "id": claim.id, "claim": claim.label, "table": claim.table, "dataset": claim.dataset,
            "metric": claim.metric, "better": claim.better, "worse": claim.worse,
            "claimed_sign": claim.claimed_sign, "paper_delta": claim.paper_delta,
            "better_row": better_name, "worse_row": worse_name, "n_seeds": ci.n, "seeds": tuple(seeds),
            "ours_mean": ci.mean, "ours_low": ci.low, "ours_high": ci.high, "ours_half_width": ci.half_width,
            "bootstrap_seed": boot_seed, "bootstrap_observed": boot[0], "bootstrap_low": boot[1],
            "bootstrap_high": boot[2], "n_images": boot[3], "n_resamples": int(n_resamples) if boot[3] else 0,
            "exceeds_seed_noise": verdict,
        })
    return pd.DataFrame(out, columns=list(CLAIM_COLUMNS))


def display_claims_table(table: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """The printed view: claim | paper delta | ours (mean, CI) over seeds | bootstrap CI | exceeds seed noise?"""
    return pd.DataFrame({
        "claim": table["claim"],
        "paper delta": [_fmt(v, decimals) for v in table["paper_delta"]],
        "ours (mean, CI)": [_fmt_ci(m, lo, hi, decimals) for m, lo, hi in
                            zip(table["ours_mean"], table["ours_low"], table["ours_high"], strict=True)],
        "bootstrap CI (seed)": [
            "–" if math.isnan(lo) else f"[{lo:.{decimals}f}, {hi:.{decimals}f}] (seed {s})"
            for lo, hi, s in zip(table["bootstrap_low"], table["bootstrap_high"], table["bootstrap_seed"],
                                 strict=True)],
        "exceeds seed noise?": table["exceeds_seed_noise"],
    })


def _linthresh(paper: Iterable[float], ours: Iterable[float]) -> float:
    """Linear range of the symlog axis: the smallest non-zero published difference, so every claim the
    paper makes is at least at the edge of the linear range and the decades above it stay readable."""
    for values in (paper, ours):
        mags = [abs(v) for v in values if v is not None and not math.isnan(v) and v != 0.0]
        if mags:
            return max(min(mags), 1e-6)
    return 1e-3


def forest_plot(claims: pd.DataFrame, scale: str = "symlog", title: str | None = None):
    """Forest plot of :func:`claims_table`: one line per claim, one panel per metric.

    Each line shows our mean paired difference over seeds (dot) with its seed interval (thick bar),
    the bootstrap interval over test images (thin grey bar just below), and the paper's published
    difference (red diamond); the dashed line is zero. Differences are better minus worse, so a claim
    on AbsRel predicts a point left of zero and one on d1 right of zero. The claims span three orders
    of magnitude (learned vs depth words about 0.7 AbsRel, context-token variants 0.005), so the
    default axis is symmetric-log (linear near zero); pass ``scale="linear"`` for a plain axis.
    Returns the matplotlib Figure.
    """
    if scale not in ("symlog", "linear"):
        raise ValueError(f"scale must be 'symlog' or 'linear', got {scale!r}")
    if claims.empty:
        raise ValueError("no claims to plot: none of the claims' rows were run")
    metrics = list(dict.fromkeys(claims["metric"]))
    counts = [int((claims["metric"] == m).sum()) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8.0, 1.2 + 0.38 * len(claims) + 0.6 * len(metrics)),
                             gridspec_kw={"height_ratios": counts}, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        part = claims[claims["metric"] == metric].reset_index(drop=True)
        y = np.arange(len(part), dtype=float)
        boot = part["bootstrap_low"].notna().to_numpy()
        ax.hlines(y[boot] + 0.22, part["bootstrap_low"][boot], part["bootstrap_high"][boot], color="0.6", lw=1.2,
                  label="bootstrap CI (images, one seed)" if boot.any() else None)
        seeds = part["ours_low"].notna().to_numpy()
        ax.hlines(y[seeds], part["ours_low"][seeds], part["ours_high"][seeds], color="C0", lw=2.5,
                  label="ours: CI over seeds" if seeds.any() else None)
        ax.plot(part["ours_mean"], y, "o", color="C0", label="ours: mean over seeds")
        ax.plot(part["paper_delta"], y, "D", color="C3", mfc="none", label="paper (one seed)")
        ax.axvline(0.0, color="k", ls="--", lw=0.8)
        ax.set_yticks(y, list(part["claim"]))
        ax.set_ylim(len(part) - 0.5, -0.6)
        shown = [v for col in ("paper_delta", "ours_mean", "ours_low", "ours_high", "bootstrap_low", "bootstrap_high")
                 for v in part[col] if not math.isnan(v)] + [0.0]
        lo, hi = min(shown), max(shown)
        if scale == "symlog":
            linthresh = _linthresh(part["paper_delta"], part["ours_mean"])
            ax.set_xscale("symlog", linthresh=linthresh)
            # Pad by a factor in the log decades (or by the linear range when a side is empty).
            ax.set_xlim(lo * 1.6 if lo < -linthresh else -linthresh, hi * 1.6 if hi > linthresh else linthresh)
        else:
            pad = 0.05 * (hi - lo) or 1e-3
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(f"{metric}: better − worse" + (" (symlog axis)" if scale == "symlog" else ""))
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0.0, 0.7 / fig.get_figheight(), 1.0, 1.0))
    return fig


#: How the numbers of :func:`results_extra` were computed (stored beside them in results.json).
METHOD_NOTE = (
    "seed_table: mean over seeds and Student-t 95 % interval mean +- t_{0.975, n-1} * s / sqrt(n) "
    "(s the sample standard deviation over the n seeds); claims: per seed the paired difference "
    "better - worse (same seed, same test images), summarised with the same interval; bootstrap: "
    "resample the test images with replacement (paired), mean difference per resample, 2.5 / 97.5 "
    "percentiles; exceeds seed noise: the seed interval lies entirely on the claimed side of zero"
)


def results_extra(seed_summary: pd.DataFrame, claims: pd.DataFrame, **more: Any) -> dict[str, Any]:
    """The seed study for ``finish_notebook(ctx, rows, extra=...)``: :func:`seed_table` and
    :func:`claims_table` as lists of records, the method in words, and any further entries.

    Why records: results.json is strict JSON (NaN becomes null), and a DataFrame would be stored as its
    printed text. The per-seed metrics are the notebook's rows themselves, stored beside this.
    """
    out: dict[str, Any] = {"seed_table": seed_summary.to_dict(orient="records"),
                           "claims": claims.to_dict(orient="records"), "seed_study_method": METHOD_NOTE}
    for key, value in more.items():
        out[key] = value.to_dict(orient="records") if isinstance(value, pd.DataFrame) else value
    return out
