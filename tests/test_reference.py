"""Published numbers: complete, correctly transcribed, and tied to the experiment registry."""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd
import pytest

from clipdepth.study import experiments, reference
from clipdepth.study.reference import (
    METRICS,
    PAPER_METRIC_NOTE,
    REFERENCE_COLUMNS,
    load_reference,
    load_table8,
    reference_for,
)

# Rows printed in each table (repeated rows are printed, hence transcribed, each time).
EXPECTED_ROWS = {"t3": 12, "t4": 8, "t5": 6, "t6": 8, "t7": 6, "depthclip": 1}


@pytest.mark.parametrize(("table", "n_rows"), sorted(EXPECTED_ROWS.items()))
def test_every_table_has_its_rows(table: str, n_rows: int) -> None:
    frame = load_reference(table)
    assert len(frame) == n_rows
    assert list(frame.columns) == list(REFERENCE_COLUMNS)
    assert set(frame["table"]) == {table}
    assert frame["experiment"].is_unique


def test_all_tables_concatenated() -> None:
    frame = load_reference()
    assert len(frame) == sum(EXPECTED_ROWS.values())
    assert frame["experiment"].is_unique
    assert frame["source"].str.len().min() > 10


def test_csv_files_are_package_resources() -> None:
    # pyproject ships reference/*.csv as package data; the loader must not depend on a checkout.
    names = {p.name for p in resources.files("clipdepth.study.reference").iterdir()}
    assert set(reference.TABLES.values()) | {"table8.csv"} <= names


@pytest.mark.parametrize(
    ("experiment", "metric", "value"),
    [
        ("t3/nyu/learned-7", "abs_rel", 0.319),
        ("t3/nyu/learned-7", "log_mse", 0.139),  # printed as "RMSL"
        ("t3/kitti/size-7", "rmse", 33.978),
        ("t3/nyu/colour-7", "d3", 0.449),
        ("t4/kitti/1o1d", "rmse", 6.528),
        ("t5/nyu/4o4d+learned-7", "rmse", 0.955),
        ("t5/kitti/4o4d+learned-7", "d1", 0.546),
        ("t6/nyu/learned-7-even", "sq_rel", 0.370),
        ("t6/kitti/learned-20-log", "sq_rel", 1.837),
        ("t7/nyu/learned-256-log", "abs_rel", 0.298),
        ("t7/kitti/learned-256-log", "d1", 0.652),
        ("t7/kitti/learned-256-log", "log_mse", 0.088),
        ("depthclip/nyu/zero-shot", "d1", 0.394),
        ("depthclip/nyu/zero-shot", "abs_rel", 0.388),
        ("depthclip/nyu/zero-shot", "rmse", 1.167),
        ("depthclip/nyu/zero-shot", "log10", 0.156),
    ],
)
def test_spot_values_from_the_paper(experiment: str, metric: str, value: float) -> None:
    published = reference_for(experiment)
    assert published is not None
    assert published[metric] == pytest.approx(value, abs=1e-9)


def test_reference_for_omits_unprinted_metrics() -> None:
    depthclip = reference_for("depthclip/nyu/zero-shot")
    assert depthclip is not None
    assert set(depthclip) == {"abs_rel", "rmse", "log10", "d1", "d2", "d3"}
    t3 = reference_for("t3/nyu/learned-7")
    assert t3 is not None and "sq_rel" not in t3 and len(t3) == 7
    assert all(not math.isnan(v) for v in t3.values())
    assert reference_for("t9/nyu/nothing") is None


def test_sq_rel_only_where_printed() -> None:
    frame = load_reference()
    has_sq = frame["sq_rel"].notna()
    assert set(frame.loc[has_sq, "table"]) == {"t6"}
    assert has_sq[frame["table"] == "t6"].all()
    # DepthCLIP prints no RMSL; every Auty table does.
    assert frame.loc[frame["log_mse"].isna(), "experiment"].tolist() == ["depthclip/nyu/zero-shot"]


def test_metric_values_are_plausible() -> None:
    frame = load_reference()
    d = frame[["d1", "d2", "d3"]]
    assert ((d > 0) & (d < 1)).all().all()
    assert (frame["d1"] <= frame["d2"]).all() and (frame["d2"] <= frame["d3"]).all()
    for col in ("abs_rel", "rmse", "log10"):
        assert (frame[col] > 0).all()
    # KITTI errors are in metres over [0, 80]: rmse of learned rows is several metres, NYU's below 1.2.
    learned = frame[frame["experiment"].str.contains("learned")]
    assert (learned.loc[learned["dataset"] == "kitti", "rmse"] > 5).all()
    assert (learned.loc[learned["dataset"] == "nyu", "rmse"] < 1.2).all()


def test_every_reference_row_is_a_registry_experiment() -> None:
    frame = load_reference()
    for row in frame.itertuples():
        exp = experiments.get(row.experiment)  # raises on an unknown name
        assert exp.table == row.table
        assert exp.dataset == row.dataset
        assert exp.row_label == row.row_label
    # and every registry row has published numbers to compare with
    assert set(frame["experiment"]) == set(experiments.EXPERIMENTS)


def _metric_tuple(row: pd.Series, metrics: list[str]) -> tuple[float, ...]:
    return tuple(float(row[m]) for m in metrics)


def test_repeated_rows_carry_identical_numbers() -> None:
    """Rows with the same method (config hash) are the same run printed twice: same numbers.

    Conversely two different methods never print exactly the same seven numbers, which would
    point to a copy-paste error in the transcription.
    """
    frame = load_reference().set_index("experiment")
    shared = ["abs_rel", "rmse", "log_mse", "log10", "d1", "d2", "d3"]
    names = list(frame.index)
    n_repeats = 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = experiments.config_hash(experiments.get(a)) == experiments.config_hash(experiments.get(b))
            cols = [m for m in shared if not (math.isnan(frame.loc[a, m]) or math.isnan(frame.loc[b, m]))]
            equal = _metric_tuple(frame.loc[a], cols) == _metric_tuple(frame.loc[b], cols)
            assert same == equal, (a, b)
            n_repeats += same
    # t3 depth-7 = t4 baseline; t3 learned-7 = t5 baseline = t6 7-Linear (3 pairs); t4 4o4d = t5 4o4d+depth-7;
    # t6 7-Log = t7 7; t6 20-Log = t7 20 -- each on both datasets.
    assert n_repeats == 2 * (1 + 3 + 1 + 1 + 1)


def test_known_repeat_is_identical() -> None:
    a = reference_for("t6/nyu/learned-7-even")
    b = reference_for("t3/nyu/learned-7")
    assert a is not None and b is not None
    assert {k: v for k, v in a.items() if k != "sq_rel"} == b


def test_table_spellings() -> None:
    t3 = load_reference("t3")
    for spelling in ("3", 3, "T3", "table3", "Table 3"):
        pd.testing.assert_frame_equal(load_reference(spelling), t3)
    with pytest.raises(ValueError, match="valid tables"):
        load_reference("t9")
    with pytest.raises(ValueError, match="load_table8"):
        load_reference(8)


def test_table8_shape_and_values() -> None:
    t8 = load_table8()
    assert len(t8) == 7 * 4
    assert sorted(t8["query"].unique()) == [f"{{depth_{i}}}" for i in range(7)]
    for _, group in t8.groupby("query"):
        assert list(group["rank"]) == [1, 2, 3, 4]
        assert group["distance"].is_monotonic_increasing
    first = t8[t8["rank"] == 1].set_index("bin")
    assert first.loc[1, "neighbour"] == "close</w>" and first.loc[1, "distance"] == 0.0
    assert first.loc[5, "neighbour"] == "distant</w>" and first.loc[5, "distance"] == 0.0
    assert first.loc[4, "neighbour"] == "{depth_6}" and first.loc[4, "distance"] == pytest.approx(0.185)
    # The two exact zeros are at bins 1 and 5 only (the anomaly discussed in the research notes).
    assert sorted(t8.loc[t8["distance"] == 0, "bin"]) == [1, 5]
    assert (t8["query"] == t8["bin"].map(lambda b: f"{{depth_{b}}}")).all()


def test_table8_learned_pairs_are_symmetric() -> None:
    """A distance between two learned prompts appears in both lists; the transcription must agree."""
    t8 = load_table8()
    learned = t8[t8["neighbour"].str.fullmatch(r"\{depth_\d\}")]
    dist = {(r.query, r.neighbour): r.distance for r in learned.itertuples()}
    checked = 0
    for (a, b), d in dist.items():
        if (b, a) in dist:
            assert dist[(b, a)] == pytest.approx(d, abs=1e-9), (a, b)
            checked += 1
    assert checked >= 16


def test_metric_note_explains_the_rmsl_quirk() -> None:
    assert "RMSL" in PAPER_METRIC_NOTE and "log_mse" in PAPER_METRIC_NOTE
    assert "square root" in PAPER_METRIC_NOTE
    assert METRICS == ("abs_rel", "sq_rel", "rmse", "log_mse", "log10", "d1", "d2", "d3")


def test_sources_name_their_table() -> None:
    frame = load_reference()
    for row in frame.itertuples():
        if row.table == "depthclip":
            assert "DepthCLIP" in row.source
        else:
            assert f"paper Table {row.table[1:]}" in row.source
    assert load_table8()["source"].str.contains("paper Table 8").all()
