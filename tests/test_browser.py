"""The demo's reports read at a glance in a real browser (issue 24): headless Chromium at 1,280 px.

Opens ``index.html`` and every notebook page of one demo ``./run_all.sh`` (the session's
``demo_reports`` fixture) and asserts what a reader meets: every headline comparison table fits
without horizontal scrolling, the page itself never scrolls sideways, every image loaded
(``naturalWidth > 0``), every local link resolves, no leaked ``PosixPath(`` repr, and the demo
banner is visible. Table 3's rows in the index link to ``01_token_ablation``. A screenshot of the
index is kept as an artifact under ``reports/test-artifacts/``.

Skipped, with the reason, where no Chromium is installed (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipdepth.report.browser import WIDTH, Browser, find_chromium, inspect_page, screenshot
from clipdepth.study import experiments

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: Pages that show a comparison with the paper (04 shows the nearest-neighbour tables instead).
WITH_HEADLINE = {"index", "01_token_ablation", "02_context_tokens", "03_bins", "05_baselines", "06_backbones"}
ARTIFACTS = REPO / "reports" / "test-artifacts"

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium to open the reports in (install Debian's chromium, as .ci/run does, or set "
           "CLIPDEPTH_CHROMIUM)",
)


@pytest.fixture(scope="module")
def browser():
    with Browser(width=WIDTH) as b:
        yield b


def _check_reads_at_a_glance(info: dict, page: str, headline: bool) -> None:
    """The assertions every page shares (see the module docstring)."""
    assert info["inner_width"] == WIDTH
    assert info["scroll_width"] <= info["client_width"], f"{page} scrolls sideways: {info['scroll_width']} px"
    assert info["body_scroll_width"] <= info["client_width"], f"{page}: body wider than the window"
    tables = info["tables"]
    if headline:
        assert tables, f"{page} shows no headline comparison table"
    for t in tables:
        assert t["visible"], f"{page}: headline table {t['table']} is not displayed"
        assert t["box_scroll_width"] <= t["box_client_width"], (
            f"{page}: headline table {t['table']} ({t['width']} px) scrolls inside a {t['box_client_width']} px box")
        assert t["right"] <= info["client_width"], f"{page}: headline table {t['table']} ends past the window"
    assert info["images"] or page != "index", "the index shows no figure"
    not_loaded = [i["src"] for i in info["images"] if i["natural_width"] <= 0]
    assert not not_loaded, f"{page}: images not loaded: {not_loaded}"
    assert not info["broken_links"], f"{page}: links that go nowhere: {info['broken_links']}"
    assert "PosixPath(" not in info["text"], f"{page} shows a leaked PosixPath(...) repr"
    assert info["banner_visible"] and experiments.DEMO_BANNER in (info["banner"] or ""), f"{page}: no demo banner"


def test_index_reads_at_a_glance(browser, demo_reports) -> None:
    index = demo_reports / "index.html"
    info = inspect_page(browser, index)
    _check_reads_at_a_glance(info, "index", headline=True)
    assert {t["table"] for t in info["tables"]} >= {"t3", "t4", "t5", "t6", "t7"}
    # every Table 3 row links to the notebook of Table 3, not to 05/06 that reuse its runs
    html = index.read_text(encoding="utf-8")
    section = html.split('data-table="t3"')[1].split("</section>")[0]
    headline = section.split("<details>")[0]
    rows = re.findall(r'<a href="([^"]+)" title="(t3/[^":]+)', headline)
    assert len(rows) == len(experiments.select(table="t3")), rows
    assert {href for href, _ in rows} == {"01_token_ablation.html"}
    assert "The same runs are also shown by" in section and "05_baselines" in section
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = screenshot(index, ARTIFACTS / "index-1280.png", browser=browser, max_height=4000)
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_page_reads_at_a_glance(browser, demo_reports, name) -> None:
    page = demo_reports / f"{name}.html"
    assert page.is_file(), f"./run_all.sh rendered no {page.name}"
    _check_reads_at_a_glance(inspect_page(browser, page), name, headline=name in WITH_HEADLINE)
