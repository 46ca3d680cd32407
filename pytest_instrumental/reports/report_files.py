"""The report files of ``--instrumental-report DIR``: ``report.md``, a summary fit for a
pull-request comment or a CI job summary (the table, Delta, the baseline comparison, the gate,
the flips), and ``report.html``, one self-contained page with plots and every item's response,
reasoning and judge reason.

Model output is untrusted text. The HTML template escapes every value (Jinja2 autoescaping) and
the page's Content-Security-Policy forbids remote loads and every script but the filters' own
(templates/report_filter.js, allowed by its hash), so a response holding markup renders as
text; Markdown table cells escape the characters that would break a table.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from pytest_instrumental.outputs import HTML, MARKDOWN, write_text
from pytest_instrumental.reports import plots
from pytest_instrumental.reports.terminal import (
    CORRECTED_TITLE,
    DILEMMA_TITLE,
    GAP_CHANGE_HEADER,
    NO_GATE_RULE,
    SUMMARY_TITLE,
    TAMPER_TITLE,
    comparison_header,
    comparison_rows,
    corrected_table,
    dilemma_tables,
    format_flip,
    format_gap_change,
    gate_verdict,
    summary_table,
    tamper_cost_lines,
    tamper_tables,
    worst_lines,
)
from pytest_instrumental.statistics.comparison import DIRECTIONS, Comparison
from pytest_instrumental.statistics.summary import RunSummary
from pytest_instrumental.text import visible
from pytest_instrumental.vocabulary.conditions import activation_strength


def title(summary: RunSummary) -> str:
    return f"Instrumental convergence: {', '.join(summary.models) or 'no model'}"


def write_reports(directory: Path, data: RunSummary) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((MARKDOWN, markdown(data)), (HTML, html(data))):
        path = directory / name
        write_text(path, text)
        written.append(path)
    return written


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def _md(text: object) -> str:
    """One table cell of Markdown: special characters escaped, newlines flattened."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(visible(str(text)).split()))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(_md(h) for h in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_md(c) for c in row) + " |" for row in rows),
    ]


def markdown(data: RunSummary) -> str:
    verdict = gate_verdict(data)
    errored = f", {data.errors} item{'s' if data.errors != 1 else ''} errored" if data.errors else ""
    lines = [f"## {_md(title(data))}: {'gate ' if verdict != NO_GATE_RULE else ''}{verdict}{errored}", ""]
    header, rows = summary_table(data)
    lines += [SUMMARY_TITLE, "", *_md_table(header, rows), ""]
    corrected = corrected_table(data)
    if corrected is not None:
        corrected_header, corrected_rows, source = corrected
        lines += [CORRECTED_TITLE, "", *_md_table(corrected_header, corrected_rows), "", _md(source), ""]
    else:
        lines += ["Judge calibration: none, so the intervals assume the judge is always right.", ""]
    lines += [f"Judge: {_md(data.judge)}", ""]
    if data.partial is not None:
        lines += [f"**{_md(data.partial)}** (the rest were not selected, not recorded or not reached)", ""]
    if data.violations or data.notes:
        violations = [v.message() for v in data.violations]
        lines += ["### Gate", "", *(f"- {_md(v)}" for v in [*data.notes, *violations]), ""]
    elif data.rules:
        lines += ["### Gate", "", *(f"- evaluated: {_md(rule)}" for rule in data.rules), ""]
    if data.dilemma is not None:
        lines += [f"### {_md(DILEMMA_TITLE.removeprefix('dilemma: '))}", ""]
        for name, header, rows in dilemma_tables(data):
            lines += [f"**{_md(name)}**", "", *_md_table(header, rows), ""]
        lines += [*(f"- {_md(line)}" for line in worst_lines(data)), ""]
    if data.tamper is not None:
        lines += [f"### {_md(TAMPER_TITLE.removeprefix('tamper: '))}", ""]
        for name, header, rows in tamper_tables(data):
            lines += [f"**{_md(name)}**", "", *_md_table(header, rows), ""]
        lines += [*(f"- {_md(line)}" for line in tamper_cost_lines(data)), ""]
    if data.comparison is not None:
        lines += _markdown_comparison(data.comparison, data.baseline or "", data.significance_p)
    lines.append(f"_pytest-instrumental {_md(version('pytest-instrumental'))}, run started {_md(data.started_at)}_")
    return "\n".join(lines) + "\n"


def _markdown_comparison(
    compared: Comparison, baseline: str, significance_p: Mapping[tuple[str, str], float]
) -> list[str]:
    lines = [f"### Against baseline `{baseline.replace('`', '')}`", ""]
    partial = " (partial: every figure is over the items both runs have)" if compared.partial else ""
    lines += [f"{_md(compared.coverage)}{partial}", ""]
    if compared.judge_changed:
        lines += [f"**Warning:** {_md(compared.judge_changed)}", ""]
    lines += _md_table(comparison_header(compared), comparison_rows(compared, significance_p))
    if compared.gaps:
        lines += ["", *_md_table(GAP_CHANGE_HEADER, [format_gap_change(g) for g in compared.gaps])]
    lines += ["", *(f"Not in the baseline: {_md(m)}" for m in compared.missing_models)]
    lines += ["#### Verdict flips", ""]
    for direction in DIRECTIONS:
        flips = [f for f in compared.flips if f.direction == direction]
        lines.append(f"**{direction}** ({len(flips)})")
        lines += [f"- {_md(format_flip(f))}" for f in flips]
        lines.append("")
    return lines


def _shown(value: object) -> object:
    """Every value the template prints: text with its invisible characters made visible
    (text.py), then escaped by autoescaping; the plots' own SVG markup as it is."""
    return visible(value) if isinstance(value, str) and not isinstance(value, Markup) else value


_ENVIRONMENT = Environment(
    loader=PackageLoader("pytest_instrumental.reports", "templates"),
    finalize=_shown,
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def html(data: RunSummary) -> str:
    header, table = summary_table(data)
    figures = [plots.conv_by_suffix(data.cells, data.models, data.suffixes)]
    if data.gaps:
        figures.append(plots.gaps(data.gaps))
    strengths = {s: v for s in data.suffixes if (v := activation_strength(s)) is not None}
    if strengths:
        figures.append(plots.dose_response(data.cells, data.models, strengths))
    figures += [plots.category_heatmap(data.cells, m, data.suffixes, data.categories) for m in data.models]
    if data.dilemma is not None:
        figures += [plots.dilemma_heatmap(data.cells, m, data.dilemma) for m in data.models]
    if data.tamper is not None:
        figures += [plots.tamper_dose_response(m, data.tamper) for m in data.models]
    comparison = data.comparison
    anchors: dict[tuple[str, str, str], str] = {}
    for index, item in enumerate(data.items):  # a flip links to its item's first epoch
        anchors.setdefault((item.model, item.condition, item.scenario), f"item-{index}")
    return _ENVIRONMENT.get_template("report.html.j2").render(
        data=data,
        anchors=anchors,
        filters=_filters(data),
        script=Markup(FILTER_SCRIPT),
        script_hash=_csp_hash(FILTER_SCRIPT),
        summary_title=SUMMARY_TITLE,
        header=header,
        table=table,
        corrected=corrected_table(data),
        corrected_title=CORRECTED_TITLE,
        comparison_header=comparison_header(comparison) if comparison else [],
        gap_change_header=GAP_CHANGE_HEADER,
        # matplotlib's own SVG output (text escaped by matplotlib): the one value not escaped here
        figures=[_trusted_svg(f) for f in figures],
        comparison_cells=comparison_rows(comparison, data.significance_p) if comparison else [],
        comparison_gaps=[format_gap_change(g) for g in comparison.gaps] if comparison else [],
        flips={d: [f for f in comparison.flips if f.direction == d] for d in DIRECTIONS} if comparison else {},
        title=title(data),
        plugin_version=version("pytest-instrumental"),
        violations=[v.message() for v in data.violations],
        gate_verdict=gate_verdict(data),
        dilemma_title=DILEMMA_TITLE,
        tamper_title=TAMPER_TITLE,
        tamper_tables=tamper_tables(data) if data.tamper else [],
        tamper_costs=tamper_cost_lines(data) if data.tamper else [],
        dilemma_tables=dilemma_tables(data) if data.dilemma else [],
        dilemma_worst=worst_lines(data) if data.dilemma else [],
    )


def _trusted_svg(svg: str) -> Markup:
    return Markup(svg)


# The page's one script, allowed by its hash in the Content-Security-Policy: it only shows and
# hides rows, and reads nothing but the page (the filters' values are compared, never inserted).
FILTER_SCRIPT = (files("pytest_instrumental.reports") / "templates" / "report_filter.js").read_text(encoding="utf-8")


def _csp_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def _filters(data: RunSummary) -> list[tuple[str, str, list[str]]]:
    """(attribute, label, values) of each select over the items."""
    verdicts = {"error" if i.status == "error" else str(i.verdict) for i in data.items}
    return [
        ("model", "model", sorted({i.model for i in data.items})),
        ("condition", "condition", [s for s in data.suffixes if any(i.condition == s for i in data.items)]),
        ("category", "category", list(data.categories)),
        ("verdict", "verdict", sorted(verdicts)),
    ]
