"""The scorecard draws verdicts only where meaningful, averages seeds, shows both averages and how each row was made.

Rows are written by hand in the shape :func:`clipdepth.report.session.run_rows` returns (experiment,
metrics per image, ``pooled``, ``seed``, ``protocol``, ``stale``, ``computed_by``, ``subset_label``),
finished with :func:`clipdepth.report.session.finish_notebook` and rendered with
:func:`clipdepth.report.index_page.render_index`, so the whole path from rows to pages is exercised.
"""

from __future__ import annotations

import json
import math
import re

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clipdepth import report  # noqa: E402
from clipdepth.eval.metrics import METRIC_NAMES  # noqa: E402
from clipdepth.report import index_page as report_html  # noqa: E402
from clipdepth.report import session as notebook  # noqa: E402
from clipdepth.study import comparison as scorecard  # noqa: E402
from clipdepth.study import experiments  # noqa: E402
from clipdepth.study.reference import reference_for  # noqa: E402

NYU_T3 = [e.name for e in experiments.select(table="t3", dataset="nyu")]
SUBSET_LABEL = "subset: 8 of 24,231 train / 654 test"
OTHER_COMMIT = "deadbeefcafe0123456789"


def _row(name: str, seed: int = 42, *, exact: bool = True, subset_label: str | None = None,
         commit: str | None = None, stale: bool = False, pooled: dict | None = None, **metrics: float) -> dict:
    """A run_rows-shaped row: the paper's own numbers (exact=True) or 0.5 everywhere, then ``metrics``."""
    exp = experiments.get(name)
    values = {m: 0.5 for m in METRIC_NAMES}
    if exact:
        values.update(reference_for(name))
    values.update(metrics)
    return {
        "experiment": name, "table": exp.table, "dataset": exp.dataset, "row_label": exp.row_label, **values,
        "pooled": pooled or {}, "seed": seed, "epochs": 3,
        "protocol": {"mode": "cached", "bn": "frozen", "views": 4, "precision": "fp32", "seed": seed, "epochs": 3,
                     "batch_size": 8, "eval_protocol": "eigen", "subset": 8 if subset_label else None},
        "stale": stale, "computed_by": {"commit": commit, "dirty": False}, "subset_label": subset_label,
    }


@pytest.fixture
def open_notebook(tmp_path, monkeypatch):
    """``open_notebook(profile, subset)``: a notebook context writing under tmp_path/reports."""
    for var in ("CLIPDEPTH_DATA_DIR", "HF_HUB_OFFLINE", "TQDM_DISABLE"):
        monkeypatch.setenv(var, "placeholder")
    options = [x for option in notebook.DISPLAY_OPTIONS for x in (option, pd.get_option(option))]

    def make(profile: str, subset: int | None = None):
        params = {"profile": profile, "subset": subset, "datasets": ["nyu"], "data_dir": str(tmp_path / "data"),
                  "seed": 42, "weights": None}
        return notebook.start_notebook("99_unit", params, profile=profile, reports_dir=tmp_path / "reports")

    with pd.option_context(*options):
        yield make


def _card(html: str) -> str:
    """The scorecard section of an index page (the notebook list above it has its own ok/failed marks)."""
    return html.split("<h2>Scorecard")[1].split("<h2>Figures")[0]


def _row_html(card: str, name: str) -> str:
    return card.split(f'data-experiment="{name}"')[1].split("</tr>")[0]


# -- when a verdict may be drawn -------------------------------------------------------------------


def test_verdicts_only_for_the_paper_profile_on_full_data() -> None:
    assert scorecard.verdicts_allowed("paper", None) is True
    assert scorecard.verdicts_allowed("paper", 8) is False
    assert scorecard.verdicts_allowed("demo", None) is False
    assert scorecard.no_verdict_note("paper", None) is None
    assert scorecard.no_verdict_note("demo", None).startswith("demo: no verdict")
    assert scorecard.no_verdict_note("demo", 8).startswith("demo: no verdict")  # a demo subset is still a demo
    note = scorecard.no_verdict_note("paper", 8, SUBSET_LABEL)
    assert note.startswith("subset: no verdict") and SUBSET_LABEL in note


def test_demo_results_draw_no_verdict_and_say_so(open_notebook) -> None:
    ctx = open_notebook("demo")
    rows = [_row(n) for n in NYU_T3]  # the paper's own numbers: would all be "within tolerance"
    data = json.loads(report.finish_notebook(ctx, rows).read_text())
    assert data["verdicts"] is False and data["no_verdict"].startswith("demo: no verdict")
    assert all(c["within_tolerance"] is None and c["verdict"] is None for c in data["comparison"])
    csv = pd.read_csv(ctx.out_dir / "results.csv")
    assert not [c for c in csv.columns if c.startswith("verdict_")]
    assert csv["diff_abs_rel"].tolist() == pytest.approx([0.0] * len(NYU_T3))  # the differences are shown
    md = (ctx.out_dir / "results.md").read_text()
    assert "demo: no verdict" in md and "within tolerance" not in md
    card = _card(report_html.render_index(ctx.out_dir.parent))
    assert 'class="ok"' not in card and 'class="bad"' not in card
    assert '<span class="pass">' not in card and '<span class="fail">no' not in card
    assert "within tolerance" not in card and "demo: no verdict" in card
    assert card.count('<span class="small noverdict">demo: no verdict</span>') == len(NYU_T3)
    assert "<td>+0.000</td>" in _row_html(card, NYU_T3[0])  # the differences are shown


def test_old_demo_results_with_verdicts_recorded_still_show_none(tmp_path) -> None:
    """A results.json written before the ``verdicts`` flag (demo, within_tolerance True) draws no verdict."""
    cmp = report.compare_with_paper([_row(n) for n in NYU_T3], verdicts=True)
    assert cmp["within_tolerance"].dropna().all()
    (tmp_path / "demo" / "nb").mkdir(parents=True)
    payload = {"notebook": "nb", "profile": "demo", "finished_at": "x",
               "comparison": json.loads(cmp.drop(columns=["verdict", "verdict_kind"]).to_json(orient="records"))}
    (tmp_path / "demo" / "nb" / "results.json").write_text(json.dumps(payload))
    card = _card(report_html.render_index(tmp_path / "demo"))
    assert 'class="ok"' not in card and "within tolerance" not in card and "demo: no verdict" in card


def test_subset_results_draw_no_verdict_and_show_the_subset(open_notebook) -> None:
    ctx = open_notebook("paper", subset=8)
    rows = [_row(n, subset_label=SUBSET_LABEL) for n in NYU_T3]
    data = json.loads(report.finish_notebook(ctx, rows).read_text())
    assert data["verdicts"] is False and data["no_verdict"].startswith("subset: no verdict")
    assert data["subset_label"] == SUBSET_LABEL
    assert all(c["verdict"] is None for c in data["comparison"])
    assert all(r["subset_label"] == SUBSET_LABEL for r in data["rows"])
    md = (ctx.out_dir / "results.md").read_text()
    assert "subset: no verdict" in md and SUBSET_LABEL in md and "within tolerance" not in md
    assert (pd.read_csv(ctx.out_dir / "results.csv")["subset_label"] == SUBSET_LABEL).all()
    card = _card(report_html.render_index(ctx.out_dir.parent))
    assert 'class="ok"' not in card and 'class="bad"' not in card and "within tolerance" not in card
    assert "subset: no verdict" in card
    assert all(SUBSET_LABEL in _row_html(card, n) for n in NYU_T3)


def test_paper_full_data_draws_verdicts(open_notebook) -> None:
    ctx = open_notebook("paper")
    rows = [_row(n) for n in NYU_T3]
    miss = NYU_T3[0]
    rows[0]["abs_rel"] = reference_for(miss)["abs_rel"] * 2
    data = json.loads(report.finish_notebook(ctx, rows).read_text())
    assert data["verdicts"] is True and data["no_verdict"] is None
    by_key = {(c["experiment"], c["metric"]): c for c in data["comparison"]}
    assert by_key[(miss, "abs_rel")]["within_tolerance"] is False
    assert by_key[(miss, "abs_rel")]["verdict_kind"] == "tolerance"
    assert by_key[(NYU_T3[1], "abs_rel")]["verdict"] is True
    n_published = len(reference_for(miss))  # Table 3 prints 7 columns
    md = (ctx.out_dir / "results.md").read_text()
    assert f"{n_published - 1} of {n_published} within tolerance" in md
    assert md.count(f"{n_published} of {n_published} within tolerance") == len(NYU_T3) - 1
    csv = pd.read_csv(ctx.out_dir / "results.csv")
    assert csv["verdict_abs_rel"].tolist() == [False] + [True] * (len(NYU_T3) - 1)
    card = _card(report_html.render_index(ctx.out_dir.parent))
    assert card.count('<span class="pass">yes</span>') == len(NYU_T3) - 1
    assert card.count('<span class="fail">no</span>') == 1
    assert f"{n_published - 1} of {n_published} within tolerance" in _row_html(card, miss)
    assert card.count('class="bad"') == 1
    assert card.count('class="ok"') == len(NYU_T3) * n_published - 1
    assert "no verdict" not in card


# -- provenance per row ----------------------------------------------------------------------------


def test_rows_show_protocol_computing_commit_and_stale(open_notebook) -> None:
    ctx = open_notebook("demo")
    rows = [_row(NYU_T3[0], commit=OTHER_COMMIT), _row(NYU_T3[1], stale=True), _row(NYU_T3[2])]
    path = report.finish_notebook(ctx, rows)
    own = json.loads(path.read_text())["git"]
    rows[1]["computed_by"] = dict(own)
    rows[2]["computed_by"] = dict(own)
    rows[2]["protocol"] = {**rows[2]["protocol"], "mode": "faithful", "bn": "adapt", "views": None,
                           "precision": "bf16"}
    data = json.loads(report.finish_notebook(ctx, rows).read_text())
    assert data["rows"][0]["computed_by"]["commit"] == OTHER_COMMIT and data["rows"][1]["stale"] is True
    assert data["rows"][0]["protocol"]["mode"] == "cached"

    md = (ctx.out_dir / "results.md").read_text()
    provenance = md.split("## How each row was produced")[1]
    assert "cached, BN frozen, 4 views, fp32; seed 42; 3 epochs" in provenance
    assert "faithful, BN adapt, bf16; seed 42; 3 epochs" in provenance  # views only for cached features
    assert OTHER_COMMIT[:12] in provenance and provenance.count("this commit") == 2
    assert "**stale**" in md and experiments.get(NYU_T3[1]).row_label in md.split("**stale**")[1].splitlines()[0]
    csv = pd.read_csv(ctx.out_dir / "results.csv", keep_default_na=False)
    assert csv["stale"].tolist() == [False, True, False]
    assert csv["computed_by"].tolist() == [OTHER_COMMIT[:12], "", ""]
    assert csv["mode"].tolist() == ["cached", "cached", "faithful"]
    assert csv["views"].astype(str).tolist() == ["4", "4", ""]

    card = _card(report_html.render_index(ctx.out_dir.parent, run={"git": own}))
    first, second, third = (_row_html(card, n) for n in NYU_T3[:3])
    assert "cached, BN frozen, 4 views, fp32; seed 42; 3 epochs" in first
    assert f"computed by {OTHER_COMMIT[:12]}" in first and "computed by" not in second + third
    assert 'data-stale="true"' in second and '<span class="stale"' in second
    assert "stale" not in first and "stale" not in third
    assert 'id="stale-rows"' in card and f"<code>{NYU_T3[1]}</code>" in card.split('id="stale-rows"')[1]
    # an index written at another commit shows every row's computing commit
    card = _card(report_html.render_index(ctx.out_dir.parent, run={"git": {"commit": "0" * 40, "dirty": False}}))
    assert all("computed by" in _row_html(card, n) for n in NYU_T3[:3])


# -- several seeds ---------------------------------------------------------------------------------


def test_several_seeds_are_averaged_with_a_t_interval() -> None:
    name = "t3/nyu/learned-7"  # the paper prints AbsRel 0.319
    rows = [_row(name, seed=s, abs_rel=v, rmse=1.0) for s, v in ((1, 0.324), (2, 0.325), (42, 0.326))]
    cmp = report.compare_with_paper(rows, verdicts=True).set_index("metric")
    abs_rel = cmp.loc["abs_rel"]
    assert abs_rel["n_seeds"] == 3 and abs_rel["seeds"] == [1, 2, 42]
    assert abs_rel["ours"] == pytest.approx(0.325)
    # t_{0.975, 2} = 4.302653, s = 0.001: half width = 4.302653 * 0.001 / sqrt(3)
    assert abs_rel["half_width"] == pytest.approx(4.302653 * 0.001 / math.sqrt(3), rel=1e-6)
    # 0.006 from the paper is within tolerance (0.016), but the paper lies outside our interval
    assert abs_rel["within_tolerance"] is True
    assert abs_rel["paper_in_interval"] is False and abs_rel["verdict"] is False
    assert abs_rel["verdict_kind"] == "interval"
    assert cmp.loc["rmse", "half_width"] == 0.0 and cmp.loc["rmse", "ours"] == pytest.approx(1.0)
    table = report.comparison_table(cmp.reset_index())
    assert table[("AbsRel", "± 95% CI")].item() == pytest.approx(0.002)
    assert table[("seeds", "n")].item() == 3
    assert table[("verdict", "")].item().startswith("paper inside our interval: ")
    # without verdicts: the mean and interval, nothing judged
    plain = report.compare_with_paper(rows).set_index("metric").loc["abs_rel"]
    assert plain["ours"] == pytest.approx(0.325) and plain["verdict"] is None and plain["paper_in_interval"] is None


def test_a_seed_given_twice_is_an_error() -> None:
    rows = [_row("t3/nyu/learned-7", seed=1), _row("t3/nyu/learned-7", seed=1)]
    with pytest.raises(ValueError, match="'t3/nyu/learned-7' has two result rows with seed 1"):
        report.compare_with_paper(rows)


def test_several_seeds_on_the_pages(open_notebook) -> None:
    ctx = open_notebook("paper")
    name = "t3/nyu/learned-7"
    rows = [_row(name, seed=s, abs_rel=v) for s, v in ((1, 0.324), (2, 0.325), (42, 0.326))]
    data = json.loads(report.finish_notebook(ctx, rows).read_text())
    assert [(r["seed"], r["abs_rel"]) for r in data["rows"]] == [(1, 0.324), (2, 0.325), (42, 0.326)]
    md = (ctx.out_dir / "results.md").read_text()
    assert "0.325 ± 0.002 (3 seeds) / 0.319 (+0.006)" in md and "seeds 1, 2, 42" in md
    assert "inside our interval" in md
    csv = pd.read_csv(ctx.out_dir / "results.csv")
    assert len(csv) == 1 and csv["n_seeds"].item() == 3 and csv["seeds"].item() == "1;2;42"
    assert csv["abs_rel_ci95"].item() == pytest.approx(4.302653 * 0.001 / math.sqrt(3), rel=1e-6)
    card = _card(report_html.render_index(ctx.out_dir.parent))
    row = _row_html(card, name)
    assert "0.325 ± 0.002 (3 seeds)" in row and "paper inside our interval: " in row
    assert "inside our interval" in card.split('id="legend"')[1].split("</p>")[0]


# -- both averages ---------------------------------------------------------------------------------


def test_pixel_pooled_values_are_shown_and_labelled(open_notebook) -> None:
    ctx = open_notebook("demo")
    pooled = {"abs_rel": 0.29, "rmse": 0.95, "d1": 0.47}
    rows = [_row(NYU_T3[0], seed=1, pooled=pooled),
            _row(NYU_T3[0], seed=2, pooled={"abs_rel": 0.31, "rmse": 0.97, "d1": 0.49}),
            _row(NYU_T3[1])]  # an old row without pooled values
    cmp = report.compare_with_paper(rows).set_index(["experiment", "metric"])
    assert cmp.loc[(NYU_T3[0], "abs_rel"), "pooled"] == pytest.approx(0.30)
    assert math.isnan(cmp.loc[(NYU_T3[1], "abs_rel"), "pooled"])
    table = report.comparison_table(cmp.reset_index())
    assert ("AbsRel", "ours pixel-pooled") in table.columns and ("AbsRel", "ours per image (paper)") in table.columns
    assert ("RMSL(paper)=log_mse", "ours pixel-pooled") not in table.columns
    assert table[("δ<1.25", "ours pixel-pooled")].iloc[0] == pytest.approx(0.48)

    report.finish_notebook(ctx, rows)
    md = (ctx.out_dir / "results.md").read_text()
    assert "AbsRel ours per image (paper) / paper (diff)" in md and "| AbsRel ours pixel-pooled |" in md
    csv = pd.read_csv(ctx.out_dir / "results.csv")
    assert csv["pooled_abs_rel"].iloc[0] == pytest.approx(0.30) and math.isnan(csv["pooled_abs_rel"].iloc[1])
    card = _card(report_html.render_index(ctx.out_dir.parent))
    assert "per image (paper)" in card.split('id="legend"')[1].split("</p>")[0]
    assert '<td class="pooled">0.300</td>' in _row_html(card, NYU_T3[0])
    assert re.findall(r'<td class="pooled">([^<]*)</td>', _row_html(card, NYU_T3[1])) == ["–"] * 3


def test_rows_without_pooled_values_add_no_pooled_columns() -> None:
    table = report.comparison_table(report.compare_with_paper([_row(n) for n in NYU_T3]))
    assert not [c for c in table.columns if "pixel-pooled" in c[1]]
    assert ("seeds", "n") not in table.columns  # one seed: no interval columns either


def test_comparison_figure_draws_the_seed_interval() -> None:
    name = "t3/nyu/learned-7"
    rows = [_row(name, seed=s, abs_rel=v) for s, v in ((1, 0.324), (2, 0.325), (42, 0.326))]
    fig = report.plot_comparison(report.compare_with_paper(rows), metric="abs_rel")
    ours = [c for ax in fig.axes for c in ax.containers if c.get_label().startswith("ours")]
    assert len(ours) == 1 and ours[0].errorbar is not None
    segment = ours[0].errorbar.lines[2][0].get_segments()[0]
    assert segment[1][0] - segment[0][0] == pytest.approx(2 * 4.302653 * 0.001 / math.sqrt(3), rel=1e-5)
    single = report.plot_comparison(report.compare_with_paper([_row(name)]), metric="abs_rel")
    assert all(c.errorbar is None for ax in single.axes for c in ax.containers)
