"""Published numbers of the baselines and the notebook's comparison tables (issue 7, notebook)."""

from __future__ import annotations

import math

import pytest

from clipdepth.baselines import PUBLISHED, clip2depth_implied_abs_rel, published_table
from clipdepth.eval.metrics import METRIC_NAMES
from clipdepth.report.steps.baselines import published_beside, summary_table


def _row(experiment: str, dataset: str, abs_rel: float, **extra) -> dict:
    metrics = {m: 0.5 for m in METRIC_NAMES}
    metrics["abs_rel"] = abs_rel
    return {"experiment": experiment, "table": "x", "dataset": dataset, "row_label": experiment, "method": experiment,
            **metrics, "n_trainable": 10, "n_parameters": 100, **extra}


def test_published_numbers_carry_their_kind_and_source():
    kinds = {(p.method, p.kind) for p in PUBLISHED}
    assert kinds == {("CLIP2Depth", "relative"), ("LLM-MDE", "normalised")}
    assert all(p.source and p.confidence in {"P", "S", "I", "U"} for p in PUBLISHED)
    assert len(published_table()) == len(PUBLISHED)
    # 0.319 x (1 - 0.687) and 0.303 x (1 - 0.756), the learned-7 rows of paper Table 3
    assert clip2depth_implied_abs_rel(0.319, "nyu") == pytest.approx(0.099847)
    assert clip2depth_implied_abs_rel(0.303, "kitti") == pytest.approx(0.073932)
    with pytest.raises(ValueError):
        clip2depth_implied_abs_rel(0.3, "sun")


def test_published_beside_sets_like_beside_like():
    rows = [
        _row("depthclip/nyu/zero-shot", "nyu", 0.40),
        _row("t3/nyu/learned-7", "nyu", 0.30),
        _row("baselines/nyu/clip2depth", "nyu", 0.15),
        _row("baselines/nyu/llm-mde", "nyu", 0.9, norm_abs_rel=0.6, norm_rmse=0.2),
    ]
    table = published_beside(rows)
    get = lambda method, metric: table[(table.method.str.startswith(method)) & (table.metric == metric)]  # noqa: E731
    depthclip = get("DepthCLIP", "abs_rel").iloc[0]
    assert (depthclip.ours, depthclip.published) == (0.40, 0.388)
    relative = get("CLIP2Depth", "abs_rel change vs learned-7").iloc[0]
    assert relative.ours == pytest.approx(-0.5) and relative.published == -0.687 and "relative" in relative.kind
    few_shot = get("LLM-MDE", "abs_rel (few-shot)").iloc[0]
    assert few_shot.ours == 0.6 and few_shot.published == 0.639 and "normalised" in few_shot.kind
    metric = get("LLM-MDE", "abs_rel").iloc[0]
    assert metric.ours == 0.9 and (metric.published is None or math.isnan(metric.published))
    assert set(table.dataset) == {"nyu", "unknown"}


def test_summary_has_one_line_per_method_and_dataset():
    rows = [_row("a", "nyu", 0.3, train_seconds=1.0), _row("a", "kitti", 0.4), _row("b", "nyu", 0.2)]
    summary = summary_table(rows)
    assert len(summary) == 3 and list(summary["trainable params"]) == [10, 10, 10]
    assert {"abs_rel", "rmse", "d1", "train s", "total params"} <= set(summary.columns)
