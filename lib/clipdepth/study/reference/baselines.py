"""Published numbers of the two trained baselines, transcribed with their source and how sure we are.

Why a separate table: neither CLIP2Depth nor LLM-MDE publishes numbers that sit directly beside a
metric-protocol row. CLIP2Depth's only verified quantitative claim is a *relative* Abs Rel reduction
against "Auty et al." (which Auty row is not stated), and LLM-MDE's numbers were (per its code) computed
on min-max-normalised depth. Each entry therefore carries its ``kind`` so the notebook never prints
them as if they were comparable metres. DepthCLIP's and the learned-7 rows' published numbers live in
:mod:`clipdepth.study.reference`.

Confidence labels follow ``shared/research/peers.md``: ``P`` primary source read, ``S`` secondary
source, ``I`` inferred by us (computation shown), ``U`` unverified (from the study brief; the PDF tables
could not be read).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

__all__ = ["PUBLISHED", "PublishedNumber", "clip2depth_implied_abs_rel", "published_table"]


@dataclass(frozen=True)
class PublishedNumber:
    """One published number. ``kind``: ``metric`` (metres, comparable), ``relative`` (a change against
    another method), ``normalised`` (on min-max-normalised depth, not comparable with metric rows)."""

    method: str
    dataset: str
    regime: str
    metric: str
    value: float
    kind: str
    confidence: str
    source: str
    note: str = ""


_CLIP2DEPTH_SRC = ("Kim, Kang, Kim & Lee, 'CLIP Can Understand Depth', arXiv 2402.03251 v2 abstract (24 Sep 2025) "
                   "and the Pattern Recognition 2025 abstract (doi 10.1016/j.patcog.2025.112475); peers.md section 1")
_LLM_MDE_SRC = ("Xia & Wu, 'Large Language Models Can Understanding Depth from Monocular Images', arXiv 2409.01133, "
                "as quoted in the study brief and the seed summary 004; tables not read (peers.md section 2)")

PUBLISHED: tuple[PublishedNumber, ...] = (
    PublishedNumber("CLIP2Depth", "nyu", "full training set", "abs_rel", -0.687, "relative", "P", _CLIP2DEPTH_SRC,
                    "Abs Rel 68.7% lower than Auty et al. (which Auty row is not stated)"),
    PublishedNumber("CLIP2Depth", "kitti", "full training set", "abs_rel", -0.756, "relative", "P", _CLIP2DEPTH_SRC,
                    "Abs Rel 75.6% lower than Auty et al. (which Auty row is not stated)"),
    PublishedNumber("LLM-MDE", "nyu", "few-shot", "rmse", 0.253, "normalised", "U", _LLM_MDE_SRC,
                    "their code min-max normalises prediction and ground truth before scoring"),
    PublishedNumber("LLM-MDE", "nyu", "few-shot", "abs_rel", 0.639, "normalised", "U", _LLM_MDE_SRC,
                    "their code min-max normalises prediction and ground truth before scoring"),
    PublishedNumber("LLM-MDE", "unknown", "zero-shot (cross-domain)", "rmse", 0.287, "normalised", "U", _LLM_MDE_SRC,
                    "train/test pair not found; normalised depth"),
    PublishedNumber("LLM-MDE", "unknown", "zero-shot (cross-domain)", "abs_rel", 0.724, "normalised", "U",
                    _LLM_MDE_SRC, "train/test pair not found; normalised depth"),
)


def clip2depth_implied_abs_rel(auty_abs_rel: float, dataset: str) -> float:
    """CLIP2Depth's Abs Rel implied by its relative claim against an Auty row (confidence ``I``).

    E.g. against the learned-7 rows (NYU 0.319, KITTI 0.303): 0.319 x (1 - 0.687) = 0.0998 and
    0.303 x (1 - 0.756) = 0.0739.
    """
    claim = {p.dataset: p.value for p in PUBLISHED if p.method == "CLIP2Depth" and p.metric == "abs_rel"}
    if dataset not in claim:
        raise ValueError(f"CLIP2Depth published no claim for {dataset!r}; valid: {', '.join(claim)}")
    return auty_abs_rel * (1.0 + claim[dataset])


def published_table() -> pd.DataFrame:
    """All entries as a data frame (one row per number)."""
    return pd.DataFrame([asdict(p) for p in PUBLISHED])
