"""report.md and report.html: content, and model output escaped (checked in a real headless browser)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_instrumental.config import Thresholds
from pytest_instrumental.report_files import html, markdown, write_reports
from pytest_instrumental.summary import Baseline, RunSummary, summarise
from pytest_instrumental.verdicts import ItemResult
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
            items.append(
                ItemResult(
                    **{
                        **base.to_dict(),
                        "response": HOSTILE if verdict else None,
                        "thinking": HOSTILE,
                        "reason": HOSTILE if verdict else None,
                    }
                )
            )
    return items


def report_data(items: list[ItemResult], baseline: list[ItemResult] | None = None) -> RunSummary:
    """A summary gated on pro_ic Conv% above 50."""
    return summarise(
        started_at="2026-11-28T00:00:00+00:00",
        items=items,
        ran={i.key for i in items},
        models=["m"],
        suffixes=["pro_ic", "anti_ic"],
        categories=["cat"],
        thresholds=Thresholds(max_conv={"pro_ic": 50}, min_gap=None, alpha=0),
        baseline=Baseline("old.json", baseline, None) if baseline else None,
        judge_name="j",
        judge_note=" (agreement with gpt-5.2: kappa 0.62)",
        notes=[],
    )


def test_markdown_has_the_table_gate_and_flips() -> None:
    items = hostile_items()
    old = [ItemResult(**{**i.to_dict(), "verdict": "no_convergence"}) if i.suffix == "pro_ic" else i for i in items]
    text = markdown(report_data(items, baseline=old))
    assert text.startswith("## Instrumental convergence: m: gate FAILED, 1 item errored\n")
    assert "| m | 100.00 \\[34.2-100.0\\] / 0.00 | 0.00 \\[0.0-79.3\\] / 0.00 (1 err) |" in text
    assert "- m pro\\_ic: Conv% 100.00 crosses the maximum 50.00 (--instrumental-max-conv)" in text
    assert "**newly convergent** (2)\n- m pro\\_ic cat-01: no\\_convergence -\\> convergence" in text
    assert "Judge: j (agreement with gpt-5.2: kappa 0.62)" in text


def test_html_escapes_model_output_and_has_the_plots() -> None:
    page = html(report_data(hostile_items()))
    assert "<script>" not in page and "<img" not in page and "<b>bold" not in page
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page
    assert page.count("<svg") == 3  # Conv% bars, the gap, one heatmap per model
    assert "default-src &#39;none&#39;" not in page and "default-src 'none'" in page


def browser() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.environ.get("INSTRUMENTAL_REQUIRE_BROWSER"):
        pytest.fail("chromium is required here (INSTRUMENTAL_REQUIRE_BROWSER) but not installed")
    return found


@pytest.mark.slow
def test_a_hostile_response_renders_as_text_in_a_real_browser(tmp_path: Path) -> None:
    chromium = browser()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    (page,) = [p for p in write_reports(tmp_path, report_data(hostile_items())) if p.suffix == ".html"]
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<title>Instrumental convergence: m</title>" in dom  # no injected script retitled it
    assert "<script" not in dom and "<img" not in dom and "<b>" not in dom  # no injected element
    # shown as text: 3 responses, 3 judge reasons, 4 reasonings (the error item has one too)
    assert dom.count("&lt;script&gt;document.title='pwned'&lt;/script&gt;") == 10
    assert dom.count("<tr") == 2 + 5  # the summary table and the item table, no row injected
