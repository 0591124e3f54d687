"""Report layer: comparison with the paper, figures, results files and the HTML index, without running models."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clipdepth import report  # noqa: E402
from clipdepth.eval.metrics import METRIC_NAMES  # noqa: E402
from clipdepth.report import index_page as report_html  # noqa: E402
from clipdepth.report import session as notebook  # noqa: E402
from clipdepth.study import experiments  # noqa: E402
from clipdepth.study.reference import reference_for  # noqa: E402


def _row(name: str, **metrics: float) -> dict:
    exp = experiments.get(name)
    base = {m: 0.5 for m in METRIC_NAMES}
    base.update(metrics)
    return {"experiment": name, "table": exp.table, "dataset": exp.dataset, "row_label": exp.row_label, **base}


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    """A demo-profile notebook context writing under tmp_path; environment changes are undone."""
    for var in ("CLIPDEPTH_DATA_DIR", "HF_HUB_OFFLINE", "TQDM_DISABLE"):
        monkeypatch.setenv(var, "placeholder")
    params = {"profile": "demo", "datasets": ["nyu"], "data_dir": str(tmp_path / "data"), "seed": 1, "weights": None}
    with _pandas_options_restored():
        yield report.start_notebook("99_unit", params, profile="demo", reports_dir=tmp_path / "reports")


def _pandas_options_restored():
    """Undo the display options start_notebook sets, so no other test sees them."""
    return pd.option_context(*[x for option in notebook.DISPLAY_OPTIONS for x in (option, pd.get_option(option))])


# -- tolerance and comparison -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "paper", "expected"),
    [
        (0.319, 0.319, True),
        (0.330, 0.319, True),  # 5 % of 0.319 = 0.016
        (0.340, 0.319, False),
        (0.004, 0.0, True),  # absolute floor 0.005
        (0.006, 0.0, False),
        (6.0, 6.322, False),  # 5 % of 6.322 = 0.316 < 0.322
        (math.nan, 0.3, None),
        (0.3, math.nan, None),
        (0.3, None, None),
    ],
)
def test_within_tolerance(ours, paper, expected) -> None:
    assert report.within_tolerance(ours, paper) is expected


def test_compare_with_paper_uses_the_published_numbers() -> None:
    rows = [_row("t3/nyu/learned-7", abs_rel=0.300, log_mse=0.150, rmse_log=0.39),
            _row("t3/kitti/depth-7", abs_rel=2.4)]
    cmp = report.compare_with_paper(rows, verdicts=True)
    assert len(cmp) == 2 * len(report.COMPARE_METRICS)
    paper = reference_for("t3/nyu/learned-7")
    get = cmp.set_index(["experiment", "metric"])
    assert get.loc[("t3/nyu/learned-7", "abs_rel"), "paper"] == pytest.approx(paper["abs_rel"])
    assert get.loc[("t3/nyu/learned-7", "abs_rel"), "difference"] == pytest.approx(0.300 - paper["abs_rel"])
    # the paper's "RMSL" (stored as log_mse) is compared with our log_mse, never with rmse_log
    assert get.loc[("t3/nyu/learned-7", "log_mse"), "paper"] == pytest.approx(0.139)
    assert get.loc[("t3/nyu/learned-7", "log_mse"), "ours"] == pytest.approx(0.150)
    assert math.isnan(get.loc[("t3/nyu/learned-7", "rmse_log"), "paper"])
    assert get.loc[("t3/nyu/learned-7", "rmse_log"), "ours"] == pytest.approx(0.39)
    assert get.loc[("t3/nyu/learned-7", "rmse_log"), "within_tolerance"] is None
    # Table 3 prints no SqRel
    assert math.isnan(get.loc[("t3/nyu/learned-7", "sq_rel"), "paper"])
    assert get.loc[("t3/kitti/depth-7", "abs_rel"), "within_tolerance"] in (True, np.True_)  # 2.4 vs 2.353
    assert get.loc[("t3/nyu/learned-7", "abs_rel"), "within_tolerance"] in (False, np.False_)  # 0.300 vs 0.319
    assert set(cmp["label"]) >= {"RMSL(paper)=log_mse", "RMSE-log (ours only)"}
    # by default no verdict is drawn: only the paper profile on full data may claim one
    assert report.compare_with_paper(rows)["within_tolerance"].isna().all()


def test_compare_with_paper_accepts_dataframes_and_own_references() -> None:
    frame = pd.DataFrame([_row("t6/kitti/learned-20-log", abs_rel=0.3)])
    cmp = report.compare_with_paper(frame)
    assert cmp.loc[cmp["metric"] == "sq_rel", "paper"].item() == pytest.approx(1.837)  # Table 6 prints SqRel
    baseline = {"experiment": "clip2depth/nyu", "table": "baselines", "dataset": "nyu", "row_label": "CLIP2Depth",
                "abs_rel": 0.2, "reference": {"abs_rel": 0.25}}
    unknown = {"experiment": "nowhere/nyu", "dataset": "nyu", "abs_rel": 0.2}
    cmp = report.compare_with_paper([baseline, unknown]).set_index(["experiment", "metric"])
    assert cmp.loc[("clip2depth/nyu", "abs_rel"), "difference"] == pytest.approx(-0.05)
    assert math.isnan(cmp.loc[("nowhere/nyu", "abs_rel"), "paper"])


def test_comparison_table_is_wide_and_in_row_order() -> None:
    names = [e.name for e in experiments.select(table="t3", dataset="nyu")]
    cmp = report.compare_with_paper([_row(n) for n in names])
    table = report.comparison_table(cmp)
    assert list(table.index.get_level_values("row")) == [experiments.get(n).row_label for n in names]
    ours = "ours per image (paper)"
    assert ("AbsRel", ours) in table.columns and ("AbsRel", "paper") in table.columns
    assert ("RMSL(paper)=log_mse", "diff") in table.columns
    assert ("RMSE-log (ours only)", ours) in table.columns
    assert table[("verdict", "")].tolist() == ["no verdict"] * len(names)
    assert ("SqRel", "ours") not in table.columns  # not printed in Table 3
    assert table[("AbsRel", "diff")].iloc[0] == pytest.approx(round(0.5 - 1.381, 3))


def test_markdown_table_escapes_pipes() -> None:
    text = report.markdown_table(["a", "b"], [["x|y", 1]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


# -- figures ------------------------------------------------------------------------------------


def _example(seed: int, shape=(24, 32)) -> dict:
    rng = np.random.default_rng(seed)
    depth = rng.uniform(1, 5, shape)
    depth[:3] = 0.0  # no ground truth
    return {"image": rng.uniform(0, 1, (*shape, 3)), "depth": depth, "pred": rng.uniform(0.5, 8, shape),
            "name": f"img{seed}", "label": f"row {seed}"}


def test_plot_qualitative_shares_one_colour_scale() -> None:
    fig = report.plot_qualitative([_example(0), _example(1)], title="q")
    grid = [ax for ax in fig.axes if ax.images]
    assert len(grid) == 6  # 2 rows x (RGB, GT, prediction)
    depth_panels = [ax for ax in grid if ax.images[0].get_array().ndim == 2]  # GT and prediction, not RGB
    assert len(depth_panels) == 4
    assert len({ax.images[0].get_clim() for ax in depth_panels}) == 1
    gt = grid[1].images[0].get_array()
    assert np.ma.is_masked(gt) and gt.mask[:3].all()  # missing ground truth is masked, not coloured


def test_plot_qualitative_needs_examples() -> None:
    with pytest.raises(ValueError, match="no examples"):
        report.plot_qualitative([])


def test_plot_comparison_one_panel_per_dataset() -> None:
    rows = [_row(e.name) for e in experiments.select(table="t3")]
    fig = report.plot_comparison(report.compare_with_paper(rows), metric="abs_rel")
    panels = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title(loc="left") for ax in panels] == ["nyu", "kitti"]
    assert all(len(ax.patches) == 12 for ax in panels)  # 6 rows x (ours, paper)
    with pytest.raises(ValueError, match="no 'nope' values"):
        report.plot_comparison(report.compare_with_paper(rows), metric="nope")


def test_save_figure_writes_png_into_the_notebook_folder(ctx) -> None:
    fig = report.plot_qualitative([_example(0)])
    path = report.save_figure(ctx, fig, "qual nyu")
    assert path == ctx.out_dir / "qual_nyu.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ctx.figures == ["qual_nyu.png"]


# -- context and results files -------------------------------------------------------------------


def test_start_notebook_prepares_folders_and_environment(ctx, tmp_path) -> None:
    assert ctx.out_dir == tmp_path / "reports" / "demo" / "99_unit"
    assert ctx.out_dir.is_dir()
    assert os.environ["CLIPDEPTH_DATA_DIR"] == "placeholder"  # the data root is a parameter, not a side effect
    (row,) = report.resolve_rows(["t3/nyu/depth-7"], "demo", ctx.params)
    assert row.data_root.startswith(str(tmp_path / "data"))
    assert ctx.banner == experiments.DEMO_BANNER
    assert ctx.datasets == ["nyu"]
    assert ctx.experiment_names("t4") == [e.name for e in experiments.select(table="t4", dataset="nyu")]


def test_start_notebook_shows_wide_comparison_tables_whole(tmp_path) -> None:
    names = [e.name for e in experiments.select(table="t3", dataset="nyu")]
    table = report.comparison_table(report.compare_with_paper([_row(n) for n in names]))
    assert table.shape[1] > 20  # wider than pandas' default display.max_columns
    with _pandas_options_restored(), pd.option_context("display.max_columns", 20):
        assert "<th>...</th>" in table._repr_html_()  # what a notebook page showed before
        report.start_notebook("99_unit", {}, profile="demo", reports_dir=tmp_path)
        html = table._repr_html_()
        assert "<th>...</th>" not in html and "<td>...</td>" not in html
        ours = "ours per image (paper)"
        assert html.count(f"<th>{ours}</th>") == table.columns.get_level_values(1).tolist().count(ours) > 0


def test_start_notebook_rejects_unknown_profile(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown profile 'full'"):
        report.start_notebook("x", {}, profile="full", reports_dir=tmp_path)


def test_context_rejects_unknown_dataset(ctx) -> None:
    ctx.params["datasets"] = ["nyu", "sunrgbd"]
    with pytest.raises(ValueError, match="sunrgbd"):
        ctx.experiment_names("t3")


def test_finish_notebook_writes_json_csv_md(ctx) -> None:
    names = [e.name for e in experiments.select(table="t3", dataset="nyu")]
    rows = [_row(n, abs_rel=0.1 * (i + 1)) for i, n in enumerate(names)]
    path = report.finish_notebook(ctx, rows, extra={"note": np.float32(1.5)})
    data = json.loads(path.read_text())
    assert path == ctx.out_dir / "results.json"
    assert data["profile"] == "demo" and data["banner"] == experiments.DEMO_BANNER
    assert data["parameters"]["datasets"] == ["nyu"] and data["parameters"]["seed"] == 1
    assert data["weights"]["id"] == "random:0"
    assert data["versions"]["torch"] and data["versions"]["open_clip_torch"]
    assert "commit" in data["git"]
    assert data["wall_seconds"] >= 0
    assert [r["experiment"] for r in data["rows"]] == names
    assert all(set(METRIC_NAMES) <= set(r) for r in data["rows"])
    assert len(data["comparison"]) == len(names) * len(report.COMPARE_METRICS)
    assert data["extra"] == {"note": 1.5}
    assert "RMSL" in data["metric_note"]
    csv = pd.read_csv(ctx.out_dir / "results.csv")
    assert list(csv["experiment"]) == names
    assert csv["paper_abs_rel"].tolist() == pytest.approx([reference_for(n)["abs_rel"] for n in names])
    assert "diff_log_mse" in csv and "paper_rmse_log" not in csv
    md = (ctx.out_dir / "results.md").read_text()
    assert experiments.DEMO_BANNER in md and "| t3 | nyu | learned-7 |" in md


def test_results_json_is_strict_json_with_nan_metrics(ctx) -> None:
    row = _row("t3/nyu/depth-7", silog=math.nan)
    path = report.finish_notebook(ctx, [row])
    text = path.read_text()
    assert "NaN" not in text
    assert json.loads(text)["rows"][0]["silog"] is None


# -- row resolution --------------------------------------------------------------------------------


def test_resolve_row_evaluates_untrained_rows_on_cached_features() -> None:
    cached = experiments.resolve("t3/nyu/depth-7", "demo", "cached")
    live = experiments.resolve("t3/nyu/depth-7", "demo", "faithful")
    assert cached.train.mode == "cached" and cached.train.bn == "frozen"
    assert cached.config_hash == live.config_hash == experiments.config_hash(experiments.get("t3/nyu/depth-7"))
    assert cached.epochs == 0


def test_resolve_row_overrides() -> None:
    base = experiments.resolve("t3/nyu/learned-7", "demo")
    assert experiments.resolve("t3/nyu/learned-7", "demo", seed=42).run_key == base.run_key
    assert experiments.resolve("t3/nyu/learned-7", "demo", seed=7).run_key != base.run_key
    assert experiments.resolve("t3/nyu/learned-7", "demo", epochs=1).epochs == 1
    assert experiments.resolve("t3/nyu/learned-7", "paper", weights="/w/rn50.pt").weights == "/w/rn50.pt"
    with pytest.raises(ValueError, match="training mode"):
        experiments.resolve("t3/nyu/learned-7", "demo", mode="fast")


def test_repo_path_is_relative_to_the_repository_root(monkeypatch) -> None:
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "notebooks")
    assert report.repo_root() == root
    assert report.repo_path("data") == root / "data"
    assert report.repo_path("/abs/x") == Path("/abs/x")


# -- HTML index ------------------------------------------------------------------------------------


def test_index_scorecard_links_and_missing_rows(ctx) -> None:
    names = [e.name for e in experiments.select(table="t3", dataset="nyu")]
    paper = {n: reference_for(n) for n in names}
    rows = [_row(n, **paper[n]) for n in names]  # exact reproduction: all within tolerance
    rows[0]["abs_rel"] = paper[names[0]]["abs_rel"] * 2  # one miss
    report.save_figure(ctx, report.plot_qualitative([_example(0)]), "qualitative_nyu")
    report.finish_notebook(ctx, rows)
    profile_dir = ctx.out_dir.parent
    (profile_dir / "99_unit.html").write_text("<html></html>")
    run = {"profile": "demo", "started_at": "2024-01-01T00:00:00", "wall_seconds": 61.0,
           "notebooks": {"99_unit": {"status": "ok", "seconds": 12.0}, "98_broken": {"status": "failed",
                                                                                   "error": "ValueError: boom"}},
           "versions": {"torch": "9.9"}}
    path = report.write_index(profile_dir, run)
    html = path.read_text()
    assert experiments.DEMO_BANNER in html
    for name in names:
        assert f'data-experiment="{name}"' in html
    assert f"{paper['t3/nyu/learned-7']['abs_rel']:.3f}" in html
    assert 'href="99_unit.html"' in html and 'src="99_unit/qualitative_nyu.png"' in html
    assert "FAILED" in html and "ValueError: boom" in html
    assert "1 min 01 s" in html and "torch 9.9" in html
    # a demo draws no verdict (tests/test_scorecard.py shows the paper profile drawing them)
    card = html.split("<h2>Scorecard")[1].split("<h2>Figures")[0]
    assert '<span class="pass">yes' not in card and '<span class="fail">no' not in card
    assert 'class="ok"' not in card and 'class="bad"' not in card and "within tolerance" not in card
    assert "demo: no verdict" in html
    missing = set(report_html.expected_rows()) - set(names)
    assert f"{len(missing)} row(s) of Tables 3-7 have no results yet" in html


def test_index_reports_complete_tables(tmp_path) -> None:
    profile_dir = tmp_path / "demo"
    (profile_dir / "nb").mkdir(parents=True)
    rows = [_row(n) for n in report_html.expected_rows()]
    comparison = report.compare_with_paper(rows)
    payload = {"notebook": "nb", "profile": "demo", "finished_at": "x", "rows": rows,
               "comparison": json.loads(comparison.to_json(orient="records"))}
    (profile_dir / "nb" / "results.json").write_text(json.dumps(payload))
    html = report_html.render_index(profile_dir)
    assert f"All {len(rows)} rows of Tables 3-7 present" in html
    assert experiments.DEMO_BANNER in html  # the banner comes from the profile even without run info


def test_index_survives_a_broken_results_file(tmp_path) -> None:
    (tmp_path / "demo" / "bad").mkdir(parents=True)
    (tmp_path / "demo" / "bad" / "results.json").write_text("{not json")
    html = report_html.render_index(tmp_path / "demo")
    assert "unreadable results.json" in html


def test_force_recomputes_a_shared_run_once_per_run_all(tmp_path, monkeypatch) -> None:
    """With force, a result written after the notebook (or run_all --force, via CLIPDEPTH_FORCE_SINCE)
    started counts as fresh; an older one is recomputed."""
    from types import SimpleNamespace

    from clipdepth.train import plan

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = SimpleNamespace(run_dir=run_dir, finished=lambda: "finished result")
    monkeypatch.delenv("CLIPDEPTH_FORCE_SINCE", raising=False)
    assert plan.run_options({}).done(trainer) == "finished result"  # no force: reuse
    assert plan.run_options({"force": True}, force_since=0.0).done(trainer) is None  # no result file yet
    (run_dir / "result.json").write_text("{}")
    written = (run_dir / "result.json").stat().st_mtime
    assert plan.run_options({"force": True}, force_since=written - 10).done(trainer) == "finished result"
    assert plan.run_options({"force": True}, force_since=written + 10).done(trainer) is None
    monkeypatch.setenv("CLIPDEPTH_FORCE_SINCE", f"{written - 10:.3f}")  # run_all's start wins
    assert plan.run_options({"force": True}, force_since=written + 10).done(trainer) == "finished result"


# -- headline views (issue 24) ---------------------------------------------------------------------

from clipdepth.report import comparison_view  # noqa: E402

NYU_T3 = [e.name for e in experiments.select(table="t3", dataset="nyu")]


def _t3_comparison(**overrides: float) -> pd.DataFrame:
    return report.compare_with_paper([_row(n, **overrides) for n in NYU_T3])


def test_headline_pairs_ours_with_the_paper_and_the_difference() -> None:
    cmp = _t3_comparison(abs_rel=0.4, d1=0.5)
    head = comparison_view.headline_table(cmp)
    learned = "t3/nyu/learned-7"
    paper = reference_for(learned)
    # Table 3 prints seven columns (no SqRel): each has ours and the paper's; Δ for AbsRel, RMSE, δ<1.25 only
    assert list(dict.fromkeys(head.columns.get_level_values(0))) == [
        "AbsRel ↓", "RMSE ↓", "RMSL ↓", "log10 ↓", "δ<1.25 ↑", "δ<1.25² ↑", "δ<1.25³ ↑"]
    assert [c for c in head.columns if c[1] == "Δ"] == [("AbsRel ↓", "Δ"), ("RMSE ↓", "Δ"), ("δ<1.25 ↑", "Δ")]
    line = head.loc[("t3", "nyu", "learned-7")]
    assert line[("AbsRel ↓", "ours")] == 0.4 and line[("AbsRel ↓", "paper")] == paper["abs_rel"]
    assert line[("AbsRel ↓", "Δ")] == pytest.approx(0.4 - paper["abs_rel"])
    assert line[("δ<1.25 ↑", "Δ")] == pytest.approx(0.5 - paper["d1"])
    assert line[("RMSL ↓", "paper")] == paper["log_mse"]  # the paper's RMSL column, compared with log_mse
    assert list(head.index.get_level_values("row")) == [experiments.get(n).row_label for n in NYU_T3]


@pytest.mark.parametrize(
    ("diff", "paper", "higher", "expected"),
    [
        (0.05, 0.4, False, "background-color: rgba(200, 40, 40, 0.5);"),  # 12.5 % worse: half strength
        (-0.05, 0.4, False, "background-color: rgba(40, 95, 190, 0.5);"),  # better
        (-0.05, 0.4, True, "background-color: rgba(200, 40, 40, 0.5);"),  # δ: lower is worse
        (0.2, 0.4, False, "background-color: rgba(200, 40, 40, 0.9); color: #fff;"),  # capped at 25 %
        (0.0, 0.4, False, ""),
        (math.nan, 0.4, False, ""),
        (0.1, None, False, ""),
    ],
)
def test_difference_colour_says_sign_and_size(diff, paper, higher, expected) -> None:
    assert comparison_view.difference_style(diff, paper, higher) == expected


def test_notebook_view_is_a_headline_per_table_and_a_collapsed_full_table() -> None:
    rows = [_row(n) for n in NYU_T3] + [_row("t4/nyu/baseline")]
    page = report.show_comparison(report.compare_with_paper(rows), "02_context_tokens")._repr_html_()
    assert page.count('data-view="headline"') == 2 and page.count("<details>") == 2
    t3 = page.split('data-table="t3"')[1].split("</section>")[0]
    assert '<a href="01_token_ablation.html">01_token_ablation</a>' in t3  # reused rows say where they live
    t4 = page.split('data-table="t4"')[1].split("</section>")[0]
    assert 'class="cmp-note"' not in t4  # Table 4 is this notebook's own
    full = t3.split("<details>")[1]
    assert "pixel-pooled" in full or "ours per image (paper)" in full
    assert "protocol" in full and "RMSE-log (ours only)" in full
    headline = t3.split("<details>")[0]
    assert "<br" not in headline and "RMSE-log" not in headline  # one number per cell, headline metrics only
    assert report.show_comparison(report.compare_with_paper(rows), "01_token_ablation")._repr_html_().count(
        'class="cmp-note"') == 1  # only Table 4 is reused in 01
    assert page == report.show_comparison(report.compare_with_paper(rows), "02_context_tokens")._repr_html_()


def test_wide_table_view_drops_the_integer_index() -> None:
    table = pd.DataFrame({"backbone": ["RN50", "ViT"], "dataset": ["nyu", "nyu"], "abs_rel": [0.31234, 0.4],
                          "status": ["runs", "not supported yet: <why>"], "stride": [32, 16]})
    page = report.show_table(table, index=["dataset", "backbone"], headline=["abs_rel", "status"])._repr_html_()
    headline, full = page.split("<details>")
    assert ">0<" not in headline and ">1<" not in headline  # no 0, 1, ... row numbers
    assert "0.312" in headline and "stride" not in headline and "stride" in full
    assert "&lt;why&gt;" in headline  # text is escaped
    with pytest.raises(ValueError, match=r"show_table: no column\(s\) \['loss'\]"):
        report.show_table(table, index=["dataset"], headline=["loss"])


def test_index_links_each_row_to_its_own_tables_notebook(tmp_path) -> None:
    """Table 3 rows link to 01_token_ablation even when a newer 05 results file reuses one of them."""
    profile_dir = tmp_path / "demo"

    def write(nb: str, names: list[str], finished: str) -> None:
        cmp = report.compare_with_paper([_row(n) for n in names])
        payload = {"notebook": nb, "profile": "demo", "finished_at": finished,
                   "comparison": json.loads(cmp.to_json(orient="records"))}
        (profile_dir / nb).mkdir(parents=True)
        (profile_dir / nb / "results.json").write_text(json.dumps(payload))

    write("01_token_ablation", NYU_T3, "2024-01-01T00:00:00")
    write("05_baselines", ["t3/nyu/learned-7"], "2024-01-02T00:00:00")
    html = report_html.render_index(profile_dir)
    section = html.split('data-table="t3"')[1].split("</section>")[0]
    headline, full = section.split("<details>")
    links = [part.split('"')[0] for part in headline.split("<table", 1)[1].split('<a href="')[1:]]
    assert len(links) == len(NYU_T3) and set(links) == {"01_token_ablation.html"}
    assert "also shown by" in section and '<a href="05_baselines.html">05_baselines</a>' in section
    learned = full.split('data-experiment="t3/nyu/learned-7"')[1].split("</tr>")[0]
    assert "(also in 05_baselines)" in learned
    assert "<br" not in headline


def test_index_puts_rows_of_other_settings_apart(tmp_path) -> None:
    """Notebook 06's Table 3 rows on other backbones (no published numbers) get their own section."""
    name = "t3/nyu/learned-7[arch=ViT-B-32-quickgelu]"
    row = {**_row("t3/nyu/learned-7"), "experiment": name}
    cmp = report.compare_with_paper([row])
    assert cmp["paper"].isna().all()
    payload = {"notebook": "06_backbones", "profile": "demo", "finished_at": "x",
               "comparison": json.loads(cmp.to_json(orient="records"))}
    (tmp_path / "demo" / "06_backbones").mkdir(parents=True)
    (tmp_path / "demo" / "06_backbones" / "results.json").write_text(json.dumps(payload))
    html = report_html.render_index(tmp_path / "demo")
    assert 'data-table="t3"' not in html
    section = html.split('data-table="t3-variants"')[1].split("</section>")[0]
    assert "the same rows with other settings" in section and "learned-7[arch=ViT-B-32-quickgelu]" in section
    headline = section.split("<details>")[0]
    assert ">paper<" not in headline and ">ours<" in headline  # nothing published: ours only


def test_index_template_is_package_data() -> None:
    import tomllib
    from fnmatch import fnmatch
    from importlib import resources

    template = resources.files("clipdepth") / "report" / "templates" / "index.html.j2"
    assert template.is_file()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["clipdepth"]
    assert any(fnmatch("report/templates/index.html.j2", g) for g in globs)


def test_notebook_cells_leak_no_return_values() -> None:
    """A cell ending in a bare save_figure(...) / finish_notebook(...) prints PosixPath('...') on its page."""
    leaks = []
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            last = "".join(cell["source"]).rstrip().splitlines()[-1] if "".join(cell["source"]).strip() else ""
            bare = not last.startswith((" ", "\t")) and "=" not in last.split("(")[0]
            if bare and any(f in last for f in ("save_figure(", "finish_notebook(")) and not last.endswith(";"):
                leaks.append(f"{path.name}: {last}")
    assert not leaks, leaks


def test_headline_marks_verdicts_only_where_they_are_drawn() -> None:
    rows = [_row(n, **reference_for(n)) for n in NYU_T3]  # the paper's own numbers: within tolerance
    rows[0]["abs_rel"] = reference_for(NYU_T3[0])["abs_rel"] * 2
    judged = comparison_view.headline_styler(report.compare_with_paper(rows, verdicts=True), verdicts=True).to_html()
    n_published = len(reference_for(NYU_T3[0]))
    assert judged.count(' bad"') == 1 and judged.count(' ok"') == len(NYU_T3) * n_published - 1
    demo = comparison_view.headline_styler(report.compare_with_paper(rows)).to_html()
    assert ' bad"' not in demo and ' ok"' not in demo


def test_screenshot_command_names_a_missing_page(tmp_path, capsys) -> None:
    from clipdepth.report import browser

    assert browser.main([str(tmp_path / "demo"), str(tmp_path / "docs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("browser: error: no such page(s): ") and "index.html" in err and "\n" not in err
    assert not (tmp_path / "docs").exists()
