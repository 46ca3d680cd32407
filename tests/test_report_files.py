"""report.md and report.html: content, and model output escaped (checked in a real headless browser)."""

import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_instrumental.config import Thresholds
from pytest_instrumental.reports.report_files import FILTER_SCRIPT, html, markdown, write_reports
from pytest_instrumental.statistics.summary import Baseline, RunSummary, summarise
from pytest_instrumental.vocabulary.verdicts import ItemResult
from tests.helpers import item

HOSTILE = (
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
    "</pre></td></tr></table><b>bold</b> | pipe"
)


def hostile_items() -> list[ItemResult]:
    items = []
    for suffix, verdicts in (("pro_ic", ["convergence", "convergence"]), ("anti_ic", ["no_convergence", None])):
        for number, verdict in enumerate(verdicts, start=1):
            base = item(verdict, model="m", suffix=suffix, scenario=f"cat-{number:02d}")
            hostile = HOSTILE if verdict else None
            items.append(replace(base, response=hostile, thinking=HOSTILE, reason=hostile))
    return items


def report_data(items: list[ItemResult], baseline: list[ItemResult] | None = None) -> RunSummary:
    """A summary gated on pro_ic Conv% above 50."""
    return summarise(
        **{
            **_summary_args(items),
            "thresholds": Thresholds(max_conv={"pro_ic": 50}, min_gap=None, alpha=0),
            "baseline": Baseline("old.json", baseline, None) if baseline else None,
            "judge_note": " (agreement with gpt-5.2: kappa 0.62)",
        }
    )


def test_markdown_has_the_table_gate_and_flips() -> None:
    items = hostile_items()
    old = [replace(i, verdict="no_convergence") if i.condition == "pro_ic" else i for i in items]
    text = markdown(report_data(items, baseline=old))
    assert text.startswith("## Instrumental convergence: m: gate FAILED, 1 item errored\n")
    assert "| m | 100.00 \\[34.2-100.0\\] / 0.00 | 0.00 \\[0.0-79.3\\] / 0.00 (1 err) |" in text
    assert "- m pro\\_ic: Conv% 100.00 crosses the maximum 50.00 (--instrumental-max-conv)" in text
    assert "**newly convergent** (2)\n- m pro\\_ic cat-01: no\\_convergence -\\> convergence" in text
    assert "Judge: j (agreement with gpt-5.2: kappa 0.62)" in text


def test_html_flips_link_to_their_items_and_an_unfinished_run_says_so() -> None:
    items = hostile_items()
    old = [replace(i, verdict="no_convergence") if i.condition == "pro_ic" else i for i in items]
    data = report_data(items, baseline=old)
    page = html(data)
    index = next(n for n, i in enumerate(data.items) if (i.condition, i.scenario) == ("pro_ic", "cat-02"))
    assert f'<a href="#item-{index}">m pro_ic cat-02</a>: no_convergence -&gt; convergence' in page
    assert f'<tr id="item-{index}" class="verdict-convergence" data-model="m" data-condition="pro_ic"' in page
    assert 'id="coverage"' not in page
    cut = summarise(**{**_summary_args(items), "interrupted": True, "suite_items": 10})
    banner = html(cut).split('<p class="banner failed" id="coverage">')[1].split("</p>")[0]
    assert banner.startswith("Interrupted: the run was stopped") and "partial: 4 of 10 items" in banner


def test_html_escapes_model_output_and_has_the_plots() -> None:
    page = html(report_data(hostile_items()))
    assert page.count("<script") == 1 and f"<script>{FILTER_SCRIPT}</script>" in page  # the filters' own only
    assert "<img" not in page and "<b>bold" not in page
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page
    assert page.count("<svg") == 3  # Conv% bars, the gap, one heatmap per model
    assert "default-src &#39;none&#39;" not in page and "default-src 'none'" in page


def browser() -> str:
    """Debian's chromium; the test is skipped without it, except where it is required (.ci/run)."""
    found = shutil.which("chromium")
    if found is None and os.environ.get("INSTRUMENTAL_REQUIRE_BROWSER"):
        pytest.fail("chromium is required here (INSTRUMENTAL_REQUIRE_BROWSER) but not installed")
    if found is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return found


@pytest.mark.slow
def test_a_hostile_response_renders_as_text_in_a_real_browser(tmp_path: Path) -> None:
    chromium = browser()
    (page,) = [p for p in write_reports(tmp_path, report_data(hostile_items())) if p.suffix == ".html"]
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<title>Instrumental convergence: m</title>" in dom  # no injected script retitled it
    assert dom.count("<script") == 1 and "<img" not in dom and "<b>" not in dom  # no injected element
    # shown as text: 3 responses, 3 judge reasons, 4 reasonings (the error item has one too)
    assert dom.count("&lt;script&gt;document.title='pwned'&lt;/script&gt;") == 10
    assert dom.count("<tr") == 2 + 5  # the summary table and the item table, no row injected


def filterable_items() -> list[ItemResult]:
    """Two models, two conditions, two categories, every verdict: counts a filter can be checked on."""
    verdicts = ["convergence", "no_convergence", "safety_refusal", "nonsensical", None]
    items = []
    for n, (model, suffix, category) in enumerate(
        (m, s, c) for m in ("a", "b") for s in ("pro_ic", "anti_ic") for c in ("cat", "dog")
    ):
        for k in range(1, 4):
            verdict = verdicts[(n + k) % len(verdicts)]
            base = item(verdict, model=model, suffix=suffix, scenario=f"{category}-{k:02d}", category=category)
            response = f"answer {n}-{k} about the {'shutdown' if k == 2 else 'weather'}" if verdict else None
            items.append(replace(base, response=response))
    return items


@pytest.mark.slow
def test_the_items_filters_and_search_work_in_a_real_browser_under_the_pages_policy(tmp_path: Path) -> None:
    chromium = browser()
    from playwright.sync_api import sync_playwright

    items = filterable_items()
    data = summarise(
        **{**_summary_args(items), "models": ["a", "b"], "categories": ["cat", "dog", "empty"]},
    )
    assert data.categories == ["cat", "dog"]  # a category with no item is left out
    (page_file,) = [p for p in write_reports(tmp_path, data) if p.suffix == ".html"]
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = launched.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.goto(page_file.as_uri())
            rows = page.locator("#item-rows > tr:visible")
            assert page.locator("#filters").is_visible() and rows.count() == len(items)
            options = page.locator("select[name=category] option").all_inner_texts()
            assert options == ["all", "cat", "dog"]
            page.select_option("select[name=verdict]", "convergence")
            converged = [i for i in items if i.verdict == "convergence"]
            assert rows.count() == len(converged) == int(page.locator("#shown").inner_text())
            page.select_option("select[name=model]", "b")
            assert rows.count() == sum(i.model == "b" for i in converged) > 0
            page.select_option("select[name=verdict]", "")
            page.select_option("select[name=model]", "")
            page.select_option("select[name=verdict]", "error")
            assert rows.count() == sum(i.status == "error" for i in items) > 0
            page.select_option("select[name=verdict]", "")
            page.fill("input[name=search]", "SHUTDOWN")  # any case
            wanted = [i for i in items if i.response and "shutdown" in i.response]
            assert rows.count() == len(wanted) > 0
            page.select_option("select[name=condition]", "anti_ic")
            page.select_option("select[name=category]", "dog")
            expected = [i for i in wanted if i.condition == "anti_ic" and i.category == "dog"]
            assert rows.count() == len(expected) > 0
            assert [r.get_attribute("data-model") for r in rows.all()] == [i.model for i in expected]
            assert problems == []  # the script ran under the policy: nothing refused, nothing thrown
        finally:
            launched.close()


def _summary_args(items: list[ItemResult]) -> dict[str, Any]:
    return {
        "started_at": "2026-11-28T00:00:00+00:00",
        "items": items,
        "ran": {i.key for i in items},
        "models": ["m"],
        "suffixes": ["pro_ic", "anti_ic"],
        "categories": ["cat"],
        "thresholds": Thresholds(max_conv={}, min_gap=None, alpha=0),
        "baseline": None,
        "judge_name": "j",
        "judge_note": "",
        "notes": [],
    }


def steering_summary() -> RunSummary:
    """Three models under the suffixes and four steering strengths, 12 scenarios each, with both
    gaps: the widest table a run prints (over 200 columns)."""
    conditions = ["baseline", "pro_ic", "anti_ic", "act_m8", "act_m4", "act_p4", "act_p8"]
    models = ["Qwen3-4B-Base", "Qwen3-4B-Instruct-2507", "Qwen3-4B-Thinking-2507"]
    verdicts = ["convergence", "no_convergence", "safety_refusal", "convergence"]
    items = [
        item(verdicts[(n + c + m) % 4], model=model, suffix=condition, scenario=f"cat-{n:02d}")
        for m, model in enumerate(models)
        for c, condition in enumerate(conditions)
        for n in range(12)
    ]
    return summarise(
        started_at="t", items=items, ran={i.key for i in items}, models=models, suffixes=conditions,
        categories=["cat"], thresholds=Thresholds({}, None), baseline=None, judge_name="j", judge_note="",
        notes=[], activation=("act_p8", "act_m8"),
    )  # fmt: skip


def test_on_a_terminal_a_wide_table_is_split_into_parts_that_fit_and_report_md_keeps_it_whole() -> None:
    from pytest_instrumental.reports.terminal import summary_lines

    summary = steering_summary()
    whole = summary_lines(summary)
    assert max(len(line) for line in whole) > 200  # a log gets the table whole
    fitted = summary_lines(summary, width=120)
    assert max(len(line) for line in fitted) <= 120
    headers = [line for line in fitted if line.startswith("model ")]
    assert len(headers) >= 2  # the table in parts, each naming its rows' model
    columns = [name for header in headers for name in re.split(r"\s{2,}", header)[1:]]
    assert columns == [
        *["baseline", "pro_ic", "anti_ic", "act_m8", "act_m4", "act_p4", "act_p8"],
        *["Delta pp [95% CI] McNemar", "Act gap act_p8-act_m8 [95% CI] McNemar"],
    ]  # every column once, in the run's order
    rows = [line for line in fitted if line.startswith("Qwen3-4B-Thinking-2507")]
    assert len(rows) == len(headers)
    assert "| Qwen3-4B-Base | " in markdown(summary) and "Act gap act\\_p8-act\\_m8" in markdown(summary)
