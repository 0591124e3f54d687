"""Seed statistics (clipdepth.study.stats), the paper's claims as data, and the seed-study notebook steps.

Intervals are checked against hand-worked numbers and against scipy's t quantiles; the vectorised
paired bootstrap against a slow per-resample loop that draws the same random indices; the claims
file against the published tables and the experiment registry.
"""

from __future__ import annotations

import math
from importlib import resources

import matplotlib
import numpy as np
import pytest
from scipy import stats as scipy_stats

from clipdepth.eval import metrics
from clipdepth.study import experiments
from clipdepth.study import seeds as seed_study
from clipdepth.study.reference import reference_for
from clipdepth.study.reference.claims import CLAIM_COLUMNS, HIGHER_IS_BETTER, load_claims
from clipdepth.study.stats import (
    aggregate_rows,
    exceeds_noise,
    paired_bootstrap,
    paired_differences,
    t_interval,
    values_by_seed,
)

matplotlib.use("Agg")

# Student t, 0.975 quantile, 2 degrees of freedom, in closed form: for 2 degrees of freedom the
# p quantile is (2p - 1) / sqrt(2 p (1 - p)), so 0.95 / sqrt(0.04875) = 4.302653 (tables: 4.303).
T_0975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


# ---------------------------------------------------------------------------------------------
# t interval
# ---------------------------------------------------------------------------------------------


def test_t_interval_hand_worked() -> None:
    # [1, 2, 3]: mean 2, s = sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1, half width = 4.302653 / sqrt(3).
    ci = t_interval([1.0, 2.0, 3.0])
    assert ci.n == 3
    assert ci.mean == pytest.approx(2.0, abs=1e-15)
    assert ci.half_width == pytest.approx(2.484138, abs=5e-7)
    assert ci.half_width == pytest.approx(T_0975_2 / math.sqrt(3.0), rel=1e-12)
    assert (ci.low, ci.high) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=5e-7)
    mean, low, high, half, n = ci  # plain tuple unpacking, as the notebooks use it
    assert (mean, n) == (2.0, 3)


@pytest.mark.parametrize(("n", "confidence"), [(2, 0.95), (3, 0.95), (5, 0.9), (10, 0.99)])
def test_t_interval_matches_scipy(n: int, confidence: float) -> None:
    values = np.random.default_rng(n).normal(0.3, 0.01, size=n)
    ci = t_interval(values, confidence)
    low, high = scipy_stats.t.interval(confidence, n - 1, loc=values.mean(), scale=scipy_stats.sem(values))
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-12, abs=1e-15)
    quantile = scipy_stats.t.ppf((1 + confidence) / 2, n - 1)
    assert ci.half_width == pytest.approx(quantile * values.std(ddof=1) / math.sqrt(n), rel=1e-12)


def test_t_interval_single_seed_and_ties() -> None:
    one = t_interval([0.319])
    assert one.mean == 0.319 and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.half_width)
    same = t_interval([0.5, 0.5, 0.5])
    assert (same.low, same.high, same.half_width) == (0.5, 0.5, 0.0)


@pytest.mark.parametrize(
    ("values", "confidence", "message"),
    [([], 0.95, "empty"), ([1.0, math.nan], 0.95, "non-finite"), ([1.0, 2.0], 1.0, "confidence"),
     ([[1.0, 2.0]], 0.95, "one-dimensional")],
)
def test_t_interval_bad_input(values, confidence, message) -> None:
    with pytest.raises(ValueError, match=message):
        t_interval(values, confidence)


# ---------------------------------------------------------------------------------------------
# paired differences, exceeds_noise
# ---------------------------------------------------------------------------------------------


def test_paired_differences_per_seed_in_seed_order() -> None:
    diffs = paired_differences({42: 0.30, 1: 0.31, 2: 0.29}, {2: 0.30, 42: 0.33, 1: 0.31})
    assert list(diffs) == [1, 2, 42]
    assert [diffs[s] for s in (1, 2, 42)] == pytest.approx([0.0, -0.01, -0.03], abs=1e-15)


def test_paired_differences_names_missing_seeds() -> None:
    with pytest.raises(ValueError, match=r"seeds \[7\] only in a; seeds \[2\] only in b"):
        paired_differences({1: 0.3, 7: 0.3}, {1: 0.3, 2: 0.3})


@pytest.mark.parametrize(
    ("low", "high", "sign", "expected"),
    [(-0.05, -0.01, -1, True), (-0.05, 0.01, -1, False), (-0.05, 0.0, -1, False), (0.01, 0.05, -1, False),
     (0.01, 0.05, 1, True), (-0.01, 0.05, 1, False), (math.nan, math.nan, -1, False)],
)
def test_exceeds_noise(low: float, high: float, sign: int, expected: bool) -> None:
    assert exceeds_noise(low, high, sign) is expected


def test_exceeds_noise_bad_sign() -> None:
    with pytest.raises(ValueError, match="claimed_sign"):
        exceeds_noise(-1.0, 1.0, 0)


# ---------------------------------------------------------------------------------------------
# paired bootstrap
# ---------------------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """numpy's default ('linear') percentile, written out: position h = (n - 1) q, interpolate."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _slow_bootstrap(a, b, n_resamples, seed, confidence, statistic):
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(a), size=len(a))
        deltas.append(statistic([a[i] for i in idx]) - statistic([b[i] for i in idx]))
    deltas.sort()
    alpha = 1 - confidence
    return _percentile(deltas, alpha / 2), _percentile(deltas, 1 - alpha / 2)


def _mean(xs):
    return sum(xs) / len(xs)


def _median(xs):
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


@pytest.mark.parametrize(("statistic", "slow"), [(np.mean, _mean), (np.median, _median)])
def test_paired_bootstrap_matches_slow_loop(statistic, slow) -> None:
    rng = np.random.default_rng(3)
    a = rng.gamma(2.0, 0.15, size=37)
    b = a + rng.normal(0.01, 0.02, size=37)
    # 2500 resamples cross the 1000-resample block boundary of the vectorised version.
    got = paired_bootstrap(a, b, n_resamples=2500, seed=11, confidence=0.9, statistic=statistic)
    low, high = _slow_bootstrap(list(a), list(b), 2500, 11, 0.9, slow)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12, abs=1e-14)
    assert got.observed == pytest.approx(slow(list(a)) - slow(list(b)), rel=1e-12)
    assert (got.n_images, got.n_resamples) == (37, 2500)
    assert got.low < got.observed < got.high


def test_paired_bootstrap_hand_worked() -> None:
    # Identical inputs: every resampled difference is 0.
    same = paired_bootstrap([0.3, 0.5, 0.2], [0.3, 0.5, 0.2], n_resamples=500)
    assert (same.observed, same.low, same.high) == (0.0, 0.0, 0.0)
    # A constant per-image difference survives any resampling: the interval is that constant.
    shift = paired_bootstrap([0.30, 0.50, 0.20, 0.40], [0.31, 0.51, 0.21, 0.41], n_resamples=500)
    assert (shift.low, shift.high) == pytest.approx((-0.01, -0.01), abs=1e-12)
    # Two images with differences 1 and 0: a resample's mean is 0, 0.5 or 1 with probabilities
    # 1/4, 1/2, 1/4, so with 10,000 resamples the 2.5 % and 97.5 % percentiles are 0 and 1.
    two = paired_bootstrap([1.0, 0.0], [0.0, 0.0], n_resamples=10_000, seed=5)
    assert (two.observed, two.low, two.high) == (0.5, 0.0, 1.0)


def test_paired_bootstrap_is_seeded() -> None:
    a, b = np.linspace(0.2, 0.4, 50), np.linspace(0.25, 0.38, 50) ** 1.1
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)
    assert paired_bootstrap(a, b, seed=1).low != paired_bootstrap(a, b, seed=2).low


def test_paired_bootstrap_bad_input() -> None:
    with pytest.raises(ValueError, match="per_image_a has 3 values, per_image_b has 2"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="per_image_b has non-finite values at positions \\[1\\]"):
        paired_bootstrap([1.0, 2.0], [1.0, math.inf])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1.0], [1.0], n_resamples=0)


# ---------------------------------------------------------------------------------------------
# result rows
# ---------------------------------------------------------------------------------------------


def _row(experiment: str, seed: int, abs_rel: float, per_image: list[float] | None = None, **extra) -> dict:
    row = {"experiment": experiment, "seed": seed, "abs_rel": abs_rel, "rmse": 10 * abs_rel, "d1": 1 - abs_rel,
           **extra}
    if per_image is not None:
        row["per_image"] = [{"abs_rel": v, "rmse": 10 * v, "d1": 1 - v} for v in per_image]
    return row


def test_aggregate_rows_and_values_by_seed() -> None:
    rows = [_row("x", 1, 1.0), _row("y", 1, 5.0), _row("x", 2, 2.0), _row("x", 3, 3.0)]
    rows.append({"experiment": "z", "seed": 1, "metrics": {"abs_rel": 0.25}})  # nested metrics also read
    frame = aggregate_rows(rows, metrics=("abs_rel",))
    assert list(frame["experiment"]) == ["x", "y", "z"]
    x = frame.iloc[0]
    assert (x["n"], x["seeds"], x["mean"]) == (3, (1, 2, 3), 2.0)
    assert x["half_width"] == pytest.approx(T_0975_2 / math.sqrt(3), rel=1e-12)
    assert frame.iloc[1]["n"] == 1 and math.isnan(frame.iloc[1]["low"])
    assert frame.iloc[2]["mean"] == 0.25
    assert values_by_seed(rows, "x", "rmse") == {1: 10.0, 2: 20.0, 3: 30.0}


def test_rows_need_distinct_integer_seeds() -> None:
    with pytest.raises(ValueError, match="two result rows for seed 1"):
        values_by_seed([_row("x", 1, 1.0), _row("x", 1, 2.0)], "x", "abs_rel")
    with pytest.raises(ValueError, match="'x' has no 'seed'"):
        values_by_seed([{"experiment": "x", "abs_rel": 1.0}], "x", "abs_rel")


# ---------------------------------------------------------------------------------------------
# claims as data
# ---------------------------------------------------------------------------------------------


def test_claims_file_is_package_data() -> None:
    assert "claims.csv" in {p.name for p in resources.files("clipdepth.study.reference").iterdir()}


def test_claims_name_registry_rows_and_deltas_are_published_differences() -> None:
    claims = load_claims()
    assert len({c.id for c in claims}) == len(claims) >= 20
    for c in claims:
        for name in (c.better, c.worse):
            assert name in experiments.EXPERIMENTS, (c.id, name)
            exp = experiments.get(name)
            assert (exp.table, exp.dataset) == (c.table, c.dataset)
        expected = reference_for(c.better)[c.metric] - reference_for(c.worse)[c.metric]
        assert c.paper_delta == pytest.approx(expected, abs=1e-12), c.id
        assert c.claimed_sign == (1 if c.metric in metrics.HIGHER_IS_BETTER else -1)
        assert c.paper_delta * c.claimed_sign >= 0, c.id  # the published numbers never contradict a claim
        assert c.quote and "Auty & Mikolajczyk 2023" in c.source


def test_claims_cover_the_issue_list() -> None:
    pairs = {(c.better, c.worse, c.metric) for c in load_claims()}
    for ds in ("nyu", "kitti"):
        assert (f"t3/{ds}/learned-7", f"t3/{ds}/depth-7", "abs_rel") in pairs
        assert (f"t4/{ds}/4o4d", f"t4/{ds}/1o1d", "abs_rel") in pairs
        assert (f"t4/{ds}/1o2d", f"t4/{ds}/1o1d", "abs_rel") in pairs
        for n in (7, 20):
            assert (f"t6/{ds}/learned-{n}-log", f"t6/{ds}/learned-{n}-even", "abs_rel") in pairs
        assert (f"t7/{ds}/learned-256-log", f"t7/{ds}/learned-7-log", "abs_rel") in pairs
    assert ("t3/nyu/depth-7", "t3/nyu/random-7", "abs_rel") in pairs
    assert ("t3/kitti/random-7", "t3/kitti/depth-7", "abs_rel") in pairs  # the KITTI numbers go the other way
    assert ("t5/nyu/4o4d+learned-7", "t5/nyu/baseline+learned-7", "abs_rel") in pairs
    by_id = {c.id: c for c in load_claims()}
    assert by_id["t4-nyu-4o4d-vs-1o1d"].paper_delta == pytest.approx(0.318 - 0.323, abs=1e-12)
    assert by_id["t4-nyu-1o2d-vs-1o1d"].paper_delta == 0.0  # the paper prints 0.323 for both


def test_higher_is_better_matches_metrics() -> None:
    assert HIGHER_IS_BETTER == metrics.HIGHER_IS_BETTER


def _write_claims(tmp_path, line: str):
    path = tmp_path / "claims.csv"
    path.write_text(",".join(CLAIM_COLUMNS) + "\n" + line + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a,t4,nyu,abs_rel,t4/nyu/4o4d,t4/nyu/2o2d,q,s", "line 2: worse experiment 't4/nyu/2o2d' has no published"),
        ("a,t4,nyu,abs_rel,t4/nyu/1o1d,t4/nyu/4o4d,q,s", "line 2: the published abs_rel .* contradicts"),
        ("a,t4,nyu,sq_rel,t4/nyu/4o4d,t4/nyu/1o1d,q,s", "line 2: 't4/nyu/4o4d' has no published sq_rel"),
        ("a,t4,kitti,abs_rel,t4/nyu/4o4d,t4/nyu/1o1d,q,s", "line 2: better experiment 't4/nyu/4o4d' is in table t4"),
        ("a,t4,nyu,absrel,t4/nyu/4o4d,t4/nyu/1o1d,q,s", "line 2: unknown metric 'absrel'"),
        ("a,t4,nyu,abs_rel,t4/nyu/4o4d", "line 2: expected 8 fields"),
    ],
)
def test_bad_claims_file_names_the_line(tmp_path, line: str, message: str) -> None:
    path = _write_claims(tmp_path, line)
    with pytest.raises(ValueError, match=message) as err:
        load_claims(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# notebook steps: seed_table, claims_table, forest_plot
# ---------------------------------------------------------------------------------------------


def test_seed_table_hand_checkable() -> None:
    rows = [_row("t4/nyu/4o4d", s, v) for s, v in ((42, 0.30), (1, 0.31), (2, 0.32))]  # paper 0.318
    rows += [_row("t4/nyu/1o1d", s, v) for s, v in ((42, 0.40), (1, 0.41), (2, 0.42))]  # paper 0.323
    rows += [_row("t4/nyu/1o2d", 42, 0.323)]
    rows += [_row("my-variant", s, 0.5) for s in (1, 2)]  # not a registry row: no paper value
    table = seed_study.seed_table(rows, verdicts=True)
    assert list(table["experiment"]) == ["t4/nyu/4o4d", "t4/nyu/1o1d", "t4/nyu/1o2d", "my-variant"]
    first = table.iloc[0]
    assert (first["n_seeds"], first["seeds"]) == (3, (1, 2, 42))
    assert first["abs_rel_mean"] == pytest.approx(0.31, abs=1e-12)
    assert first["abs_rel_half_width"] == pytest.approx(T_0975_2 * 0.01 / math.sqrt(3), rel=1e-9)
    assert first["rmse_mean"] == pytest.approx(3.1, abs=1e-12)
    assert first["abs_rel_paper"] == 0.318 and first["d1_paper"] == 0.466
    assert (first["abs_rel_paper_in_ci"], first["d1_paper_in_ci"]) == ("yes", "no")  # d1 ours 0.69 +- 0.025
    assert table.iloc[1]["abs_rel_paper_in_ci"] == "no"
    assert table.iloc[2]["abs_rel_paper_in_ci"] == "n/a (1 seed)"
    assert table.iloc[3]["abs_rel_paper_in_ci"] == "n/a (no paper value)"
    assert (table.iloc[0]["table"], table.iloc[0]["row_label"]) == ("t4", "4o4d")  # from the registry
    demo = seed_study.seed_table(rows, verdicts=False)
    assert set(demo["abs_rel_paper_in_ci"]) == {seed_study.NA_DEMO}
    view = seed_study.display_seed_table(table)
    assert view.loc[0, "abs_rel (mean ± CI)"] == "0.310 ± 0.025"
    assert view.loc[2, "abs_rel (mean ± CI)"] == "0.323"


def _claim_rows(seeds_1o1d=(42, 1, 2)) -> list[dict]:
    # 4o4d - 1o1d per seed: -0.03, -0.02, -0.04 -> mean -0.03, s = 0.01, CI -0.03 +- 0.0248414.
    # Per image on seed 42: 4o4d is 0.03 lower on every image, so the bootstrap CI is [-0.03, -0.03].
    rows = [_row("t4/nyu/4o4d", 42, 0.30, [0.2, 0.3, 0.4]), _row("t4/nyu/4o4d", 1, 0.31, [0.21, 0.31, 0.41]),
            _row("t4/nyu/4o4d", 2, 0.32, [0.22, 0.32, 0.42])]
    values = {42: 0.33, 1: 0.33, 2: 0.36, 7: 0.3}
    rows += [_row("t4/nyu/1o1d", s, values[s], [values[s] - 0.1, values[s], values[s] + 0.1]) for s in seeds_1o1d]
    # 1o2d vs 1o1d: +0.01 on every seed (the claim says lower): reversed.
    rows += [_row("t4/nyu/1o2d", s, values[s] + 0.01) for s in seeds_1o1d]
    # Table 3 learned-7 and depth-7 stand in for Table 5's "Baseline, learned-7" (same method) and
    # Table 4's baseline; differences straddle zero.
    rows += [_row("t3/nyu/learned-7", s, v) for s, v in ((42, 0.30), (1, 0.33), (2, 0.31))]
    rows += [_row("t5/nyu/4o4d+learned-7", s, v) for s, v in ((42, 0.31), (1, 0.32), (2, 0.30))]
    return rows


def test_claims_table_hand_checkable() -> None:
    table = seed_study.claims_table(_claim_rows(), verdicts=True, n_resamples=2000)
    by_id = table.set_index("id")
    assert set(by_id.index) == {"t4-nyu-4o4d-vs-1o1d", "t4-nyu-1o2d-vs-1o1d", "t5-nyu-4o4d-learned-vs-learned"}
    c = by_id.loc["t4-nyu-4o4d-vs-1o1d"]
    assert (c["n_seeds"], c["seeds"]) == (3, (1, 2, 42))
    assert c["ours_mean"] == pytest.approx(-0.03, abs=1e-12)
    half = T_0975_2 * 0.01 / math.sqrt(3)
    assert (c["ours_low"], c["ours_high"]) == pytest.approx((-0.03 - half, -0.03 + half), abs=1e-12)
    assert c["paper_delta"] == pytest.approx(-0.005, abs=1e-12)
    assert c["bootstrap_seed"] == 42 and c["n_images"] == 3 and c["n_resamples"] == 2000
    assert (c["bootstrap_observed"], c["bootstrap_low"], c["bootstrap_high"]) == pytest.approx((-0.03,) * 3)
    assert c["exceeds_seed_noise"] == "yes"
    assert by_id.loc["t4-nyu-1o2d-vs-1o1d", "exceeds_seed_noise"] == "no (reversed)"
    assert math.isnan(by_id.loc["t4-nyu-1o2d-vs-1o1d", "bootstrap_low"])  # rows without per_image
    t5 = by_id.loc["t5-nyu-4o4d-learned-vs-learned"]
    assert (t5["better_row"], t5["worse_row"]) == ("t5/nyu/4o4d+learned-7", "t3/nyu/learned-7")
    assert t5["ours_mean"] == pytest.approx(-0.0033333333, abs=1e-9) and t5["exceeds_seed_noise"] == "no"
    demo = seed_study.claims_table(_claim_rows(), verdicts=False, n_resamples=100)
    assert set(demo["exceeds_seed_noise"]) == {seed_study.NA_DEMO}
    view = seed_study.display_claims_table(table)
    assert list(view.columns) == ["claim", "paper delta", "ours (mean, CI)", "bootstrap CI (seed)",
                                  "exceeds seed noise?"]
    row = view[table["id"] == "t4-nyu-4o4d-vs-1o1d"].iloc[0]
    assert (row["paper delta"], row["ours (mean, CI)"]) == ("-0.005", "-0.030 [-0.055, -0.005]")
    assert row["bootstrap CI (seed)"] == "[-0.030, -0.030] (seed 42)"


def test_claims_table_single_seed_and_first_seed_bootstrap() -> None:
    rows = [_row("t4/nyu/4o4d", 3, 0.30, [0.2, 0.4]), _row("t4/nyu/1o1d", 3, 0.33, [0.2, 0.46])]
    table = seed_study.claims_table(rows, verdicts=True, n_resamples=10_000, bootstrap_rng_seed=5)
    c = table.iloc[0]
    assert c["n_seeds"] == 1 and math.isnan(c["ours_low"]) and c["exceeds_seed_noise"] == "n/a (1 seed)"
    # Seed 42 absent: the bootstrap uses seed 3; per-image differences 0 and -0.06 -> [-0.06, 0].
    assert c["bootstrap_seed"] == 3
    assert (c["bootstrap_low"], c["bootstrap_high"]) == pytest.approx((-0.06, 0.0), abs=1e-12)


def test_claims_table_mismatched_seeds_name_the_claim() -> None:
    with pytest.raises(ValueError, match=r"claim t4-nyu-4o4d-vs-1o1d .*seeds \[2\] only in a; seeds \[7\] only in b"):
        seed_study.claims_table(_claim_rows(seeds_1o1d=(42, 1, 7)), n_resamples=10)


def test_forest_plot_one_line_per_claim() -> None:
    table = seed_study.claims_table(_claim_rows(), verdicts=True, n_resamples=200)
    fig = seed_study.forest_plot(table, title="demo")
    try:
        labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
        assert labels == list(table["claim"])  # all three claims are on abs_rel: one panel
        ax = fig.axes[0]
        assert ax.get_xscale() == "symlog"
        paper_marker = [line for line in ax.get_lines() if line.get_marker() == "D"][0]
        assert list(paper_marker.get_xdata()) == pytest.approx(list(table["paper_delta"]))
        assert any(line.get_xdata()[0] == 0.0 == line.get_xdata()[1] for line in ax.get_lines()
                   if line.get_linestyle() == "--")  # the zero line
    finally:
        matplotlib.pyplot.close(fig)
    mixed = table.copy()
    mixed.loc[0, "metric"] = "d1"
    fig = seed_study.forest_plot(mixed, scale="linear")
    try:
        assert len(fig.axes) == 2
        assert sum(len(ax.get_yticklabels()) for ax in fig.axes) == len(mixed)
    finally:
        matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="no claims to plot"):
        seed_study.forest_plot(table.iloc[0:0])
