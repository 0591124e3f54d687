"""Figures of a table notebook: ours beside the paper, qualitative depth maps, and saving them.

Why a module of its own: the figures read the comparison (:mod:`clipdepth.study.comparison`) and the test
images :func:`clipdepth.report.session.run_rows` kept, and they are saved the same way in every notebook
(with the profile banner stamped on, shown once as PNG); nothing else in the report layer draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipdepth.eval.metrics import HIGHER_IS_BETTER
from clipdepth.report.session import NotebookContext, in_ipython
from clipdepth.study import experiments
from clipdepth.study.comparison import METRIC_LABELS, is_missing

__all__ = ["pick_examples", "plot_comparison", "plot_qualitative", "save_figure"]


def pick_examples(
    ctx: NotebookContext, names: Sequence[str], per_row: int = 1, start: int = 0
) -> list[dict[str, Any]]:
    """Test images of several rows for :func:`plot_qualitative`, each labelled with its row.

    Ordered image by image (all rows for the first image, then the next), so predictions of different
    prompts on the same scene sit one under the other.
    """
    out = []
    for i in range(start, start + per_row):
        for name in names:
            kept = ctx.examples.get(name, [])
            if i < len(kept):
                exp = experiments.get(name)
                out.append({**kept[i], "label": f"{exp.table} {exp.row_label}"})
    return out


def plot_comparison(df: pd.DataFrame, metric: str = "abs_rel", title: str | None = None):
    """Horizontal bars, ours beside the paper's, one panel per dataset, for one metric.

    ``df`` is :func:`compare_with_paper`'s output (or anything with its columns). Rows without a
    published value show our bar only; rows run with several seeds show the 95 % interval as an error
    bar. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    data = df[df["metric"] == metric]
    if data.empty:
        raise ValueError(f"no {metric!r} values to plot; metrics present: {sorted(set(df['metric']))}")
    datasets = list(dict.fromkeys(data["dataset"]))
    heights = [max(2.0, 0.42 * len(data[data["dataset"] == d]) + 1.2) for d in datasets]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    label = METRIC_LABELS.get(metric, metric)
    better = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        part = data[data["dataset"] == dataset]
        labels = [f"{t}: {r}" for t, r in zip(part["table"], part["row_label"], strict=True)]
        y = np.arange(len(part))
        spread = pd.to_numeric(part["half_width"], errors="coerce") if "half_width" in part else None
        xerr = spread.fillna(0.0).to_numpy() if spread is not None and spread.notna().any() else None
        ax.barh(y - 0.2, part["ours"], height=0.4, color="#1f77b4", xerr=xerr, capsize=2,
                label="ours" + (" (mean ± 95% CI over seeds)" if xerr is not None else ""))
        has_paper = part["paper"].notna().to_numpy()
        if has_paper.any():
            ax.barh(y[has_paper] + 0.2, part["paper"].to_numpy()[has_paper], height=0.4, color="#ff7f0e",
                    label="paper")
        for yi, ours, paper in zip(y, part["ours"], part["paper"], strict=True):
            if not is_missing(ours):
                ax.text(ours, yi - 0.2, f" {ours:.3f}", va="center", fontsize=7)
            if not is_missing(paper):
                ax.text(paper, yi + 0.2, f" {paper:.3f}", va="center", fontsize=7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{dataset}", fontsize=9, loc="left")
        ax.set_xlabel(f"{label} ({better})", fontsize=8)
        ax.margins(x=0.15)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"{label}: ours vs paper", fontsize=10)
    fig.tight_layout()
    return fig


def _depth_range(examples: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    values = []
    for ex in examples:
        gt = np.asarray(ex["depth"], dtype=float)
        values.append(gt[gt > 0].ravel())
        pred = np.asarray(ex["pred"], dtype=float)
        values.append(pred[np.isfinite(pred)].ravel())
    allv = np.concatenate(values) if values else np.array([0.0, 1.0])
    if allv.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(allv, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def plot_qualitative(examples: Sequence[Mapping[str, Any]], title: str = "", cmap: str = "magma_r"):
    """RGB | ground truth | prediction, one line per example, one colour scale for the whole figure.

    Each example has ``image`` (H x W x 3, floats in [0, 1] or uint8), ``depth`` (metres, 0 = no
    ground truth, drawn grey) and ``pred`` (metres, same H x W); an optional ``label`` titles the
    prediction. A shared scale makes colours comparable across rows and between GT and prediction.
    """
    import matplotlib.pyplot as plt

    if not examples:
        raise ValueError("no examples to plot (did run_rows keep any? keep_examples > 0)")
    vmin, vmax = _depth_range(examples)
    n = len(examples)
    h, w = np.asarray(examples[0]["depth"]).shape[:2]
    panel_w = 3.0
    panel_h = max(1.0, panel_w * h / max(w, 1))
    fig, axes = plt.subplots(n, 3, figsize=(3 * panel_w + 0.8, n * panel_h + 0.8), squeeze=False)
    colours = plt.get_cmap(cmap).with_extremes(bad="#bbbbbb")
    mappable = None
    for i, ex in enumerate(examples):
        image = np.asarray(ex["image"])
        if image.dtype != np.uint8:
            image = np.clip(image.astype(float), 0.0, 1.0)
        gt = np.asarray(ex["depth"], dtype=float)
        pred = np.asarray(ex["pred"], dtype=float)
        axes[i, 0].imshow(image)
        axes[i, 1].imshow(np.ma.masked_where(gt <= 0, gt), cmap=colours, vmin=vmin, vmax=vmax)
        mappable = axes[i, 2].imshow(pred, cmap=colours, vmin=vmin, vmax=vmax)
        name = ex.get("name", "")
        axes[i, 0].set_title(f"RGB {name}" if i == 0 or name else "RGB", fontsize=7)
        axes[i, 1].set_title("ground truth", fontsize=7)
        axes[i, 2].set_title(f"prediction: {ex['label']}" if ex.get("label") else "prediction", fontsize=7)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.suptitle(title or "qualitative results", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.92, 0.15, 0.02, 0.7))
    fig.colorbar(mappable, cax=cax, label="depth (m)")
    return fig


def save_figure(ctx: NotebookContext, fig, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``<out_dir>/<name>.png`` (with the demo banner stamped on it) and show it once.

    Why display the saved PNG instead of relying on the backend: run_all sets ``MPLBACKEND=Agg``,
    under which a kernel would show nothing, and the HTML report must contain the figures.
    """
    import matplotlib.pyplot as plt

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    path = ctx.out_dir / f"{safe}.png"
    if ctx.banner:  # below the axes; bbox_inches="tight" grows the canvas to include it
        fig.text(0.5, -0.01, ctx.banner, ha="center", va="top", fontsize=8, color="#a05a00",
                 bbox={"facecolor": "#fff3cd", "edgecolor": "#e0a800", "boxstyle": "round,pad=0.2"})
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    if path.name not in ctx.figures:
        ctx.figures.append(path.name)
    if in_ipython():
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path
