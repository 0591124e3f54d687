"""The seed study as notebook 02 runs it (issue 13, must-show 2 and 3), on tiny data in-process.

Three Table 4 NYU rows (two trained, the untrained baseline) for seeds 42 and 1, one epoch, a few
synthetic frames: per-seed rows, the seed table's Student-t interval, the claims table, the forest plot,
results.json; then a rerun reuses every finished seed and adding seed 2 trains only seed 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from clipdepth import report
from clipdepth.model.prompt_learner import AUTHORS_EXAMPLE_INPUT, TOKEN_INIT_STD, token_distance
from clipdepth.report.steps import seeds as seed_steps
from clipdepth.study import seeds as seed_study
from clipdepth.study.reference import reference_for
from clipdepth.train import plan

ROWS = ("t4/nyu/1o1d", "t4/nyu/4o4d", "t4/nyu/baseline")
SEEDS = [42, 1]
N_TRAIN, N_TEST = 4, 3  # one step of one batch per epoch; three test images for the bootstrap


def _params(root: Path, seeds: list[int]) -> dict:
    return dict(profile="demo", datasets=["nyu"], data_dir=str(root / "data"), weights=None, device="cpu",
                seeds=seeds, epochs=1, subset=None, train_mode="faithful", force=False,
                reports_dir=str(root / "reports"), runs_dir=str(root / "runs"), cache_dir=str(root / "cache"),
                n_train=N_TRAIN, n_test=N_TEST)


def _run(root: Path, seeds: list[int], clip) -> tuple[report.NotebookContext, list[dict]]:
    ctx = report.start_notebook("02_context_tokens", _params(root, seeds), profile="demo",
                                reports_dir=str(root / "reports"))
    return ctx, report.run_rows(ctx, list(ROWS), clip_model=clip, keep_examples=0)


@pytest.fixture(scope="module")
def study(tmp_path_factory, rn50):
    """First run (seeds 42, 1) and the notebook's seed-study cells, then a rerun and a run with seed 2 added."""
    root = tmp_path_factory.mktemp("seed-notebook")
    with pytest.MonkeyPatch.context() as mp:  # start_notebook sets $CLIPDEPTH_DATA_DIR; restore it after
        mp.setenv("CLIPDEPTH_DATA_DIR", str(root / "data"))
        ctx, rows = _run(root, SEEDS, rn50)
        options = seed_steps.verdict_options(ctx)
        summary = seed_study.seed_table(rows, **options)
        claims = seed_study.claims_table(rows, **options)
        report.save_figure(ctx, seed_study.forest_plot(claims, title="test"), "claims_forest")
        results = report.finish_notebook(ctx, rows, extra=seed_study.results_extra(summary, claims))
        _, rerun = _run(root, SEEDS, rn50)
        _, added = _run(root, [*SEEDS, 2], rn50)
    return {"ctx": ctx, "rows": rows, "summary": summary, "claims": claims, "results": results,
            "rerun": rerun, "added": added}


def test_one_row_per_seed_under_the_registry_name(study) -> None:
    rows = study["rows"]
    assert [(r["experiment"], r["seed"]) for r in rows] == [(name, s) for s in SEEDS for name in ROWS]
    assert not any(r["reused"] for r in rows)
    for r in rows:
        assert len(r["per_image"]) == N_TEST and math.isfinite(r["abs_rel"])
        assert r["protocol"]["seed"] == r["seed"]
    trained = [r for r in rows if r["experiment"] == "t4/nyu/4o4d"]
    assert trained[0]["abs_rel"] != trained[1]["abs_rel"], "seeds 42 and 1 trained the same tokens"
    baseline = [r for r in rows if r["experiment"] == "t4/nyu/baseline"]
    assert baseline[0]["abs_rel"] == baseline[1]["abs_rel"], "an untrained row cannot depend on the seed"


def test_seed_table_is_the_student_t_interval_over_seeds(study) -> None:
    table = study["summary"].set_index("experiment")
    assert list(table.index) == list(ROWS)
    assert (table["n_seeds"] == 2).all()
    t975 = scipy_stats.t.ppf(0.975, df=1)
    for name in ROWS[:2]:
        values = np.array([r["abs_rel"] for r in study["rows"] if r["experiment"] == name])
        half = t975 * values.std(ddof=1) / math.sqrt(2)
        line = table.loc[name]
        assert line["abs_rel_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert line["abs_rel_half_width"] == pytest.approx(half, rel=1e-9)
        assert math.isfinite(line["abs_rel_low"]) and line["abs_rel_low"] < line["abs_rel_mean"] < line["abs_rel_high"]
        assert line["abs_rel_paper"] == reference_for(name)["abs_rel"]
        assert line["abs_rel_paper_in_ci"] == "n/a (demo)"
    shown = seed_study.display_seed_table(study["summary"])
    assert (shown["abs_rel paper in CI?"] == "n/a (demo)").all()


def test_claims_table_pairs_seeds_and_says_demo(study) -> None:
    claims = study["claims"].set_index("id")
    assert set(claims.index) == {"t4-nyu-1o1d-vs-baseline", "t4-nyu-4o4d-vs-1o1d"}
    by = {(r["experiment"], r["seed"]): r for r in study["rows"]}
    claim = claims.loc["t4-nyu-4o4d-vs-1o1d"]
    diffs = [by["t4/nyu/4o4d", s]["abs_rel"] - by["t4/nyu/1o1d", s]["abs_rel"] for s in SEEDS]
    assert claim["ours_mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert claim["n_seeds"] == 2 and claim["bootstrap_seed"] == 42 and claim["n_images"] == N_TEST
    assert claim["bootstrap_low"] <= claim["bootstrap_observed"] <= claim["bootstrap_high"]
    published = reference_for("t4/nyu/4o4d")["abs_rel"] - reference_for("t4/nyu/1o1d")["abs_rel"]
    assert claim["paper_delta"] == pytest.approx(published)
    assert (claims["exceeds_seed_noise"] == "n/a (demo)").all()
    shown = seed_study.display_claims_table(study["claims"])
    assert list(shown.columns) == ["claim", "paper delta", "ours (mean, CI)", "bootstrap CI (seed)",
                                   "exceeds seed noise?"]


def test_results_json_holds_seeds_aggregates_and_claims(study) -> None:
    ctx = study["ctx"]
    assert (ctx.out_dir / "claims_forest.png").is_file() and "claims_forest.png" in ctx.figures
    data = json.loads(Path(study["results"]).read_text(encoding="utf-8"))
    assert sorted((r["experiment"], r["seed"]) for r in data["rows"]) == sorted(
        (name, s) for s in SEEDS for name in ROWS)
    assert all(len(r["per_image"]) == N_TEST for r in data["rows"])
    compared = [c for c in data["comparison"] if c["metric"] == "abs_rel"]
    assert {c["experiment"] for c in compared} == set(ROWS) and all(c["n_seeds"] == 2 for c in compared)
    extra = data["extra"]
    assert [line["n_seeds"] for line in extra["seed_table"]] == [2, 2, 2]
    assert extra["seed_table"][0]["seeds"] == [1, 42]
    assert {c["id"] for c in extra["claims"]} == {"t4-nyu-1o1d-vs-baseline", "t4-nyu-4o4d-vs-1o1d"}
    assert "t_{0.975, n-1}" in extra["seed_study_method"]


def test_rerun_reuses_every_seed_and_a_new_seed_trains_alone(study) -> None:
    """Must-show 3: finished seeds are reused; adding seed 2 computes only seed 2's rows."""
    first = {(r["experiment"], r["seed"]): r for r in study["rows"]}
    rerun = study["rerun"]
    assert all(r["reused"] for r in rerun)
    assert {(r["experiment"], r["seed"]): r["abs_rel"] for r in rerun} == {k: r["abs_rel"] for k, r in first.items()}
    added = study["added"]
    assert [(r["experiment"], r["seed"]) for r in added] == [(name, s) for s in [*SEEDS, 2] for name in ROWS]
    assert [r["reused"] for r in added] == [r["seed"] != 2 for r in added]
    assert all(r["run_dir"] == first[r["experiment"], r["seed"]]["run_dir"] for r in added if r["seed"] != 2)


def test_rows_are_reported_under_their_registry_name_for_every_seed_and_mode() -> None:
    """Seed and training-mode variants keep the registry name, so every seed of a row (and a cached
    row) is compared with the same published number; the seed and protocol are columns of their own."""
    params = {"seeds": [42, 7], "train_mode": "cached"}
    names = plan.spec_names(["t3/nyu/learned-7"], "demo", params)
    resolved = plan.resolve_rows(["t3/nyu/learned-7"], "demo", params)
    assert [r.name for r in resolved] == ["t3/nyu/learned-7[bn=frozen,mode=cached]",
                                          "t3/nyu/learned-7[bn=frozen,mode=cached,seed=7]"]
    assert names == ["t3/nyu/learned-7"] * 2
    assert plan.spec_names(["t3/nyu/learned-7"], "demo", {"seeds": [1, 2]}) == ["t3/nyu/learned-7"] * 2


def test_run_options_pass_frame_counts_through() -> None:
    assert plan.run_options({"n_train": 4, "n_test": "3"}).n_train == 4
    assert plan.run_options({"n_train": 4, "n_test": "3"}).n_test == 3
    assert plan.run_options({}).n_train is None and plan.run_options({}).n_test is None


def test_verdict_options_name_the_reason(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path / "data"))

    def ctx(profile, subset):
        return report.start_notebook("02_context_tokens", {"subset": subset}, profile=profile,
                                     reports_dir=str(tmp_path / "reports"))

    assert seed_steps.verdict_options(ctx("demo", None)) == {"verdicts": False, "na_text": "n/a (demo)"}
    assert seed_steps.verdict_options(ctx("paper", 8)) == {"verdicts": False, "na_text": "n/a (subset)"}
    assert seed_steps.verdict_options(ctx("paper", None))["verdicts"] is True


def _authors_draw_on_the_global_generator(seed: int, dataset: str, batch: int = 16) -> torch.Tensor:
    """The authors' sequence re-enacted as their code runs it: global generator, two rand, seven normal."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        h, w = AUTHORS_EXAMPLE_INPUT[dataset]
        torch.rand(batch, 3, h, w)
        torch.rand(batch, 1, h, w)
        return torch.cat([torch.normal(0.0, 0.02, size=(1, 512)) for _ in range(7)])
    finally:
        torch.random.set_rng_state(state)


def test_token_init_table_against_re_enacted_draws(rn50) -> None:
    table = seed_steps.token_init_table(None, "t3/kitti/random-7", seeds=[42, 1], clip_model=rn50)
    assert list(table["pair"]) == ["ours(42) vs authors(42)", "ours(1) vs authors(1)", "ours(42) vs ours(1)",
                                   "authors(42) vs authors(1)"]
    ours = {s: torch.randn(7, 512, generator=torch.Generator().manual_seed(s)) * TOKEN_INIT_STD for s in (42, 1)}
    authors = {s: _authors_draw_on_the_global_generator(s, "kitti") for s in (42, 1)}
    expected = [token_distance(ours[42], authors[42]), token_distance(ours[1], authors[1]),
                token_distance(ours[42], ours[1]), token_distance(authors[42], authors[1])]
    for (_, line), want in zip(table.iterrows(), expected, strict=True):
        assert line["n_tokens"] == 7
        assert line["mean_l2"] == pytest.approx(want["mean_l2"], rel=1e-6)
        assert line["mean_cosine"] == pytest.approx(want["mean_cosine"], abs=1e-6)
    assert table.attrs["independent_l2"] == pytest.approx(0.64)
    with pytest.raises(ValueError, match="no vector tokens"):
        seed_steps.token_init_table(None, "t3/nyu/depth-7", seeds=[42], clip_model=rn50)
