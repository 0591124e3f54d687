"""Figures of the nearest-neighbour analysis, and the data each one draws.

Projections of learned prompts among vocabulary prompts (PCA, t-SNE), distances between the learned
prompts, each token's distance to its nearest word against its bin centre, and the nearest word over
training. Each ``plot_*`` takes the frame its data function returns, so the numbers behind a figure
can be printed or stored with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from clipdepth.study.neighbours.analysis import NeighbourAnalysis, unit
from clipdepth.study.neighbours.sweep import token_strings

__all__ = [
    "nearest_word_vs_bin",
    "pairwise_distances",
    "plot_nearest_word_vs_bin",
    "plot_neighbours_over_epochs",
    "plot_pairwise",
    "plot_projection",
    "projection",
]


def projection(
    analysis: NeighbourAnalysis,
    method: str = "pca",
    seed: int = 0,
    n_background: int = 500,
    label_k: int = 2,
    threads: int | None = 1,
) -> pd.DataFrame:
    """2-D coordinates of the learned prompts among vocabulary prompts (unit features).

    Points: a seeded random sample of ``n_background`` vocabulary prompts, each learned prompt's
    ``label_k`` nearest words (kind ``nearest``, labelled) and the learned prompts (kind ``learned``).
    ``method`` is ``pca`` or ``tsne`` (scikit-learn, ``random_state=seed``, after a 50-d PCA; t-SNE on
    the whole vocabulary would take minutes, and the sample is enough to show where the tokens sit).
    ``threads`` caps scikit-learn's OpenMP/BLAS threads: on a shared two-core machine one thread ran
    t-SNE 5-25x faster than two (workers spin-waiting on each other); None keeps the library default.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    sweep = analysis.sweep
    table = analysis.prompt
    nearest = table[(table["kind"] == "vocab")].groupby("query", sort=False).head(label_k)
    near_ids = list(dict.fromkeys(int(t) for t in nearest["token_id"]))
    rng = np.random.default_rng(seed)
    pos_of = {int(t): i for i, t in enumerate(sweep.ids)}
    near_rows = [pos_of[t] for t in near_ids]
    others = np.setdiff1d(np.arange(len(sweep.ids)), near_rows)
    background = rng.choice(others, size=min(n_background, len(others)), replace=False)
    rows = np.concatenate([background, np.array(near_rows, dtype=np.int64)])
    feats = torch.cat([sweep.features[torch.as_tensor(rows)], analysis.learned_features])
    x = unit(feats.float()).numpy()
    with threadpool_limits(threads):
        if method == "pca":
            xy = PCA(n_components=2, random_state=seed).fit_transform(x)
        else:
            reduced = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
            perplexity = float(min(30.0, (len(x) - 1) / 3))
            xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=perplexity).fit_transform(reduced)
    labels = token_strings(sweep.ids[rows]) + analysis.labels
    kinds = ["vocab"] * len(background) + ["nearest"] * len(near_rows) + ["learned"] * len(analysis.labels)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": labels, "kind": kinds})


def plot_projection(coords: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Scatter of :func:`projection` output; learned prompts and their nearest words are labelled."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 6))
    style = {"vocab": dict(s=4, c="0.75", label="vocabulary prompts"),
             "nearest": dict(s=18, c="tab:blue", label="nearest words"),
             "learned": dict(s=60, c="tab:red", marker="*", label="learned prompts")}
    for kind, kw in style.items():
        pts = coords[coords["kind"] == kind]
        ax.scatter(pts["x"], pts["y"], **kw)
        if kind != "vocab":
            for r in pts.itertuples():
                ax.annotate(r.label, (r.x, r.y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                            color=kw["c"])
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or "learned prompts among vocabulary prompts")
    return ax.figure


def pairwise_distances(analysis: NeighbourAnalysis, space: str = "prompt") -> pd.DataFrame:
    """Euclidean distances between the learned prompts (unit features) or tokens (``token_raw``/``token_unit``)."""
    x = {"prompt": unit(analysis.learned_features), "token_raw": analysis.learned_tokens,
         "token_unit": unit(analysis.learned_tokens)}[space].float()
    d = torch.cdist(x[None], x[None], compute_mode="donot_use_mm_for_euclid_dist")[0].numpy()
    return pd.DataFrame(d, index=analysis.labels, columns=analysis.labels)


def plot_pairwise(dist: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Heatmap of :func:`pairwise_distances` (the paper's neighbour lists show pairs near 0.18)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(dist, annot=True, fmt=".3f", cmap="viridis", square=True, ax=ax, annot_kws={"fontsize": 7})
    ax.set_title(title or "distances between learned prompts")
    return ax.figure


def nearest_word_vs_bin(analysis: NeighbourAnalysis, centres: Sequence[float] | torch.Tensor,
                        space: str = "prompt") -> pd.DataFrame:
    """Each learned token's distance to its nearest vocabulary word, with its bin centre in metres."""
    near = analysis.nearest_words(space)
    c = [float(v) for v in centres]
    if len(c) != len(near):
        raise ValueError(f"{len(c)} bin centres for {len(near)} learned tokens")
    return pd.DataFrame({"bin": near["bin"].to_numpy(), "query": near["query"].to_numpy(), "centre_m": c,
                         "word": near["neighbour"].to_numpy(), "distance": near["distance"].to_numpy()})


def plot_nearest_word_vs_bin(frame: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Distance to the nearest word against bin centre, each point labelled with that word."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(frame["centre_m"], frame["distance"], "o-")
    for r in frame.itertuples():
        ax.annotate(r.word, (r.centre_m, r.distance), fontsize=7, xytext=(3, 4), textcoords="offset points")
    ax.set_xlabel("bin centre (m)")
    ax.set_ylabel("distance to nearest word")
    ax.set_title(title or "how far each learned token is from any word")
    return ax.figure


def plot_neighbours_over_epochs(frame: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Distance to the nearest vocabulary word per token over training, labelled with that word."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    words = frame[frame["kind"] == "vocab"].sort_values("rank").groupby(["epoch", "query"], sort=False).head(1)
    for _, g in words.groupby("bin"):  # legend in bin order
        g = g.sort_values("epoch")
        ax.plot(g["epoch"], g["distance"], "o-", label=g["query"].iloc[0])
        for r in g.itertuples():
            ax.annotate(r.neighbour, (r.epoch, r.distance), fontsize=6, xytext=(2, 3), textcoords="offset points")
    ax.set_xticks(sorted(words["epoch"].unique()))
    ax.set_xlabel("epoch")
    ax.set_ylabel("distance to nearest word")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "nearest vocabulary word over training")
    return ax.figure
