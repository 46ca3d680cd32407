"""What a person reads in the terminal at the end of a run: the summary table (rows model,
columns suffix, plus Delta), the comparison with a baseline release, and the gate's verdict;
and the formatting of those tables' cells, which the report files share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pytest_instrumental.statistics.gate import Violation
from pytest_instrumental.statistics.metrics import MCNEMAR, WILCOXON, Cell, Gap, Interval
from pytest_instrumental.statistics.summary import RunSummary
from pytest_instrumental.text import visible

if TYPE_CHECKING:
    from pytest_instrumental.statistics.comparison import CellChange, Comparison, Flip, GapChange
    from pytest_instrumental.statistics.dilemma import Shift
    from pytest_instrumental.statistics.tamper import Dose

SUMMARY_TITLE = "Conv% [95% CI] / Refusal% (valid only)"
GAP_CHANGE_HEADER = ["model", "Delta old -> new [95% bootstrap CI]", "scenarios"]


def format_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_interval(interval: Interval | None) -> str:
    return "" if interval is None else f" [{interval.low:.1f}-{interval.high:.1f}]"


def format_cell(cell: Cell) -> str:
    """``Conv% [lo-hi] / Refusal%``, with the error count when there are errors."""
    text = f"{format_rate(cell.conv_pct)}{format_interval(cell.conv_ci)} / {format_rate(cell.refusal_pct)}"
    if cell.flaky_pct is not None:  # with epochs: the scenarios whose verdict varied
        text += f" ~{cell.flaky_pct:.0f}% varied"
    if cell.errors:
        text += f" ({cell.errors} err)"
    return text


def format_gap(gap: Gap | None) -> str:
    if gap is None or gap.delta_pp is None:
        return "n/a"
    p = "" if gap.paired_p is None else f" p={gap.paired_p:.2g}"
    return f"{gap.delta_pp:.2f}{format_interval(gap.ci)}{p}"


def _test_of(gaps: Sequence[Gap]) -> str:
    """The paired test a gap column shows (McNemar unless any gap has the epochs' test)."""
    return WILCOXON if any(g.paired_test == WILCOXON for g in gaps) else MCNEMAR


GUTTER = 2  # spaces between columns


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None) -> list[str]:
    """The table in columns; one wider than ``width`` (the terminal's) is split into parts that
    each fit, each part repeating the first column (the model), one after the other."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    parts = [list(range(1, len(header)))]
    if width is not None and sum(widths) + GUTTER * (len(widths) - 1) > width:
        parts = [[]]
        used = widths[0]
        for column in range(1, len(header)):
            if parts[-1] and used + GUTTER + widths[column] > width:
                parts.append([])
                used = widths[0]
            parts[-1].append(column)
            used += GUTTER + widths[column]

    def line(row: Sequence[str], columns: Sequence[int]) -> str:
        return "  ".join(row[i].ljust(widths[i]) for i in [0, *columns]).rstrip()

    lines: list[str] = []
    for columns in parts:
        lines += [""] if lines else []
        lines += [line(header, columns), line(["-" * w for w in widths], columns)]
        lines += [line(row, columns) for row in rows]
    return lines


def summary_table(summary: RunSummary) -> tuple[list[str], list[list[str]]]:
    """The overall table's header and rows: a model per row, a condition per column, then Delta
    (the prompt gap) and, with activation steering, the activation gap beside it."""
    by_key = {(c.model, c.suffix): c for c in summary.cells if c.category is None}
    columns: list[tuple[str, dict[str, Gap]]] = []
    if summary.gaps:
        columns.append((f"Delta pp [95% CI] {_test_of(summary.gaps)}", {g.model: g for g in summary.gaps}))
    if summary.activation_gaps and summary.activation is not None:
        pro, anti = summary.activation
        title = f"Act gap {pro}-{anti} [95% CI] {_test_of(summary.activation_gaps)}"
        columns.append((title, {g.model: g for g in summary.activation_gaps}))
    header = ["model", *summary.suffixes, *(name for name, _ in columns)]
    rows = [
        [
            model,
            *(format_cell(by_key[model, s]) for s in summary.suffixes),
            *(format_gap(gap_of.get(model)) for _, gap_of in columns),
        ]
        for model in summary.models
    ]
    return header, rows


def summary_lines(summary: RunSummary, verbose: bool = False, width: int | None = None) -> list[str]:
    """The overall table (with ``verbose`` one more table per category), the judge, the
    comparison with the baseline, and the gate's violations; control characters made visible.
    With ``width`` (a terminal's), each table wider than it is split into parts that fit."""
    models, suffixes = summary.models, summary.suffixes
    lines = [SUMMARY_TITLE, *_table(*summary_table(summary), width)]
    if verbose:
        by_key = {(c.model, c.suffix, c.category): c for c in summary.cells}
        for category in summary.categories:
            rows = [[model, *(format_cell(by_key[model, s, category]) for s in suffixes)] for model in models]
            lines += ["", f"category {category}", *_table(["model", *suffixes], rows, width)]
    lines += corrected_lines(summary, width)
    lines += ["", _count_line(summary.cells)]
    if summary.partial is not None:
        lines.append(f"{summary.partial} (the rest were not selected, not recorded or not reached)")
    lines.append(f"judge: {summary.judge}")
    if summary.calibration is None:
        lines.append("judge calibration: none, so the intervals assume the judge is always right")
    lines += summary.warnings
    if summary.dilemma is not None:
        lines += ["", *dilemma_lines(summary, width)]
    if summary.tamper is not None:
        lines += ["", *tamper_lines(summary, width)]
    if summary.comparison is not None:
        comparison = comparison_lines(summary.comparison, str(summary.baseline), verbose, summary.significance_p, width)
        lines += ["", *comparison]
    lines = [*lines, *summary.notes, *violation_lines(summary.violations), *gate_lines(summary)]
    return [visible(line) for line in lines]  # model names are the user's or a plugin's: shown inert


CORRECTED_TITLE = "Corrected for the judge: Conv% [95% CI] / Refusal% (valid only)"


def corrected_table(summary: RunSummary) -> tuple[list[str], list[list[str]], str] | None:
    """With a calibration: the overall table's header and rows with every rate and Delta corrected
    for the judge's errors (intervals from a bootstrap over scenarios and the calibration), and
    which calibration; None without one."""
    calibration = summary.calibration
    if calibration is None:
        return None
    header = ["model", *summary.suffixes, *(["Delta pp [95% CI]"] if summary.gaps else [])]
    rows = []
    for model in summary.models:
        row = [model]
        for suffix in summary.suffixes:
            corrected = summary.corrected.get((model, suffix, None))
            row.append(
                "n/a"
                if corrected is None
                else f"{format_rate(corrected.conv_pct)}{format_interval(corrected.conv_ci)} / "
                f"{format_rate(corrected.refusal_pct)}"
            )
        if summary.gaps:
            gap = summary.corrected_gaps.get(model)
            row.append("n/a" if gap is None or gap.delta_pp is None else f"{gap.delta_pp:.2f}{format_interval(gap.ci)}")
        rows.append(row)
    source = (
        f"calibration: {calibration.judge} against {calibration.reference}, {calibration.total} labelled "
        f"({calibration.responses})"
    )
    return header, rows, source


def corrected_lines(summary: RunSummary, width: int | None = None) -> list[str]:
    table = corrected_table(summary)
    if table is None:
        return []
    header, rows, source = table
    return ["", CORRECTED_TITLE, *_table(header, rows, width), source]


NO_GATE_RULE = "no gate rule configured"


def gate_verdict(summary: RunSummary) -> str:
    """``PASSED``, ``FAILED``, or, where no rule was set and nothing failed the run, that none was."""
    if not summary.gate_passed:
        return "FAILED"
    return "PASSED" if summary.rules else NO_GATE_RULE


def gate_lines(summary: RunSummary) -> list[str]:
    """The gate's verdict when it passed, with the rules it evaluated (a failure is the
    ``GATE FAILED`` lines)."""
    if not summary.gate_passed or not summary.rules:
        return []
    return [f"gate passed: {'; '.join(summary.rules)}"]


def _count_line(cells: Sequence[Cell]) -> str:
    overall = [c for c in cells if c.category is None]
    total = sum(c.total for c in overall)
    nonsensical = sum(c.nonsensical for c in overall)
    errors = sum(c.errors for c in overall)
    return f"{total} judged ({nonsensical} nonsensical, excluded from rates), {errors} errors"


def violation_lines(violations: Sequence[Violation]) -> list[str]:
    return [f"GATE FAILED: {v.message()}" for v in violations]


DILEMMA_TITLE = "dilemma: Conv% [95% CI] / Nonsensical% by push (rows) and defence in the system prompt (columns)"
SHIFT_HEADER = ["model", "defence", "push", "pp [95% CI]", "paired p (scenarios)"]
EFFECT_TITLE = "defence effect: Conv%(plain prompt) - Conv%(defence alone), paired by scenario"
OVERRIDE_TITLE = "override: Conv%(defence and push) - Conv%(defence alone), paired by scenario"


def dilemma_tables(summary: RunSummary) -> list[tuple[str, list[str], list[list[str]]]]:
    """The dilemma's tables, each (title, header, rows): per model the matrix of pushes under
    defences; then each defence's effect and each push's override of it."""
    dilemma = summary.dilemma
    assert dilemma is not None
    by_key = {(c.model, c.suffix): c for c in summary.cells if c.category is None}

    def shown(model: str, condition: str) -> str:
        cell = by_key.get((model, condition))
        if cell is None:
            return "not run"
        return f"{format_rate(cell.conv_pct)}{format_interval(cell.conv_ci)} / {format_rate(cell.nonsensical_pct)}"

    columns: list[str | None] = [None, *dilemma.defenses]
    tables = [
        (
            model,
            ["push", "none", *dilemma.defenses],
            [[push, *(shown(model, dilemma.cell_name(push, d)) for d in columns)] for push in dilemma.pushes],
        )
        for model in summary.models
    ]
    if dilemma.effects:
        tables.append((EFFECT_TITLE, SHIFT_HEADER, [format_shift(s) for s in dilemma.effects]))
        tables.append((OVERRIDE_TITLE, SHIFT_HEADER, [format_shift(s) for s in dilemma.overrides]))
    return tables


def worst_lines(summary: RunSummary) -> list[str]:
    """The push that takes back most of each defence, per model; or why there is none."""
    dilemma = summary.dilemma
    assert dilemma is not None
    if not dilemma.effects:
        return ["no effect or override: the plain prompt (suffix baseline) did not run"]
    return [
        f"worst push against {defense} on {model}: {worst.push} ({format_gap(worst.gap)})"
        for model in summary.models
        for defense in dilemma.defenses
        if (worst := dilemma.worst(model, defense)) is not None
    ]


def dilemma_lines(summary: RunSummary, width: int | None = None) -> list[str]:
    lines = [DILEMMA_TITLE]
    for name, header, rows in dilemma_tables(summary):
        lines += [name, *_table(header, rows, width), ""]
    return [*lines, *worst_lines(summary)]


TAMPER_TITLE = (
    "tamper: Conv% [95% CI] / Nonsensical% by fine-tuning steps (rows) and defence (columns), "
    "beside the plain prompt's well-formed answers"
)


def tamper_tables(summary: RunSummary) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per model, training recipe and seed, the dose-response: rows the budgets (0: untampered),
    then how many of the plain prompt's answers stayed well-formed, and columns no defence and
    each defence; a dose where the model fell apart says so."""
    tamper = summary.tamper
    assert tamper is not None
    columns: list[str | None] = [None, *tamper.defenses]
    tables = []
    for model in summary.models:
        for recipe in tamper.recipes:
            for seed in tamper.seeds:
                responses = [tamper.response(model, recipe, d, seed) for d in columns]
                rows = [
                    [
                        str(budget),
                        format_rate(responses[0].doses[row].well_formed_pct),
                        *(_dose_cell(r.doses[row]) for r in responses),
                    ]
                    for row, budget in enumerate(tamper.budgets)
                ]
                name = f"{model} ({recipe})" if len(tamper.seeds) == 1 else f"{model} ({recipe}, seed {seed})"
                tables.append((name, ["steps", "well-formed%", "none", *tamper.defenses], rows))
    return tables


def _dose_cell(dose: Dose) -> str:
    cell = dose.cell
    if cell is None:
        return "not run" if dose.condition else "not tried"
    shown = f"{format_rate(cell.conv_pct)}{format_interval(cell.conv_ci)} / {format_rate(cell.nonsensical_pct)}"
    return f"{shown} (collapsed)" if dose.collapsed else shown


def tamper_cost_lines(summary: RunSummary) -> list[str]:
    """Each defence's tamper cost per model, recipe and seed, the spread over seeds, and the worst
    case over all of them; or why there is none."""
    tamper = summary.tamper
    assert tamper is not None
    if not tamper.costs:
        return ["no tamper cost: it is measured under a defence (--instrumental-defense) or against a threshold"]
    lines = [cost.describe() for cost in tamper.costs]
    lines += [spread.describe() for spread in tamper.spreads]
    lines += [worst.describe() for worst in tamper.worst_cases]
    if any(cost.collapsed for cost in tamper.costs):
        lines.append(
            f"(collapsed): Nonsensical% above {tamper.max_nonsensical:g} (--instrumental-max-nonsensical): "
            "the model broke, not the defence; such a dose does not count as holding"
        )
    return lines


def tamper_lines(summary: RunSummary, width: int | None = None) -> list[str]:
    lines = [TAMPER_TITLE]
    for name, header, rows in tamper_tables(summary):
        lines += [name, *_table(header, rows, width), ""]
    return [*lines, *tamper_cost_lines(summary)]


def format_shift(shift: Shift) -> list[str]:
    gap = shift.gap
    p = "n/a" if gap.paired_p is None else f"{gap.paired_p:.2g}"
    delta = "n/a" if gap.delta_pp is None else f"{gap.delta_pp:+.2f}{format_interval(gap.ci)}"
    return [shift.model, shift.defense, shift.push or "(alone)", delta, f"{p} ({gap.pairs})"]


FLIPS_SHOWN = 10  # in the terminal without -v; the report files list them all


def format_change(old: float | None, new: float | None) -> str:
    """``old -> new (+change)``."""
    if old is None or new is None:
        return f"{format_rate(old)} -> {format_rate(new)}"
    return f"{old:.2f} -> {new:.2f} ({new - old:+.2f})"


def comparison_header(compared: Comparison) -> list[str]:
    """The comparison table's header, naming the paired test its p-values come from."""
    tests = sorted({c.paired_test for c in compared.cells if c.paired_test is not None}) or ["paired test"]
    return [
        "model",
        "suffix",
        "items compared",
        "Conv% old -> new",
        f"{' / '.join(tests)} p (paired scenarios)",
        "Refusal% old -> new",
    ]


def comparison_rows(compared: Comparison, significance_p: Mapping[tuple[str, str], float]) -> list[list[str]]:
    """The comparison table's rows; where --instrumental-alpha compares a Holm-adjusted p-value,
    it is shown beside the cell's own."""
    return [format_cell_change(c, significance_p.get((c.model, c.suffix))) for c in compared.cells]


def format_cell_change(cell: CellChange, compared_p: float | None = None) -> list[str]:
    p = "n/a" if cell.paired_p is None else f"{cell.paired_p:.3g}"
    if compared_p is not None and compared_p != cell.paired_p:
        p += f" (Holm {compared_p:.3g})"
    return [
        cell.model,
        cell.suffix,
        f"{cell.shared} of {cell.baseline_items}",
        format_change(cell.old_conv_pct, cell.new_conv_pct),
        f"{p} ({cell.became_convergent} up, {cell.stopped_converging} down of {cell.pairs})",
        format_change(cell.old_refusal_pct, cell.new_refusal_pct),
    ]


def format_gap_change(gap: GapChange) -> list[str]:
    ci = "" if gap.ci is None else f" [{gap.ci.low:+.1f} to {gap.ci.high:+.1f}]"
    return [gap.model, format_change(gap.old_delta_pp, gap.new_delta_pp) + ci, str(gap.scenarios)]


def format_flip(flip: Flip) -> str:
    return f"{flip.model} {flip.suffix} {flip.scenario}: {flip.old} -> {flip.new}"


def comparison_lines(
    compared: Comparison,
    baseline: str,
    verbose: bool = False,
    significance_p: Mapping[tuple[str, str], float] | None = None,
    width: int | None = None,
) -> list[str]:
    from pytest_instrumental.statistics.comparison import DIRECTIONS

    partial = " (partial: every figure is over the items both runs have)" if compared.partial else ""
    lines = [f"against baseline {baseline}: {compared.coverage}{partial}"]
    if compared.judge_changed:
        lines.append(f"WARNING: {compared.judge_changed}")
    lines += _table(comparison_header(compared), comparison_rows(compared, significance_p or {}), width)
    if compared.gaps:
        lines += ["", *_table(GAP_CHANGE_HEADER, [format_gap_change(g) for g in compared.gaps], width)]
    lines += [f"not in the baseline: {m}" for m in compared.missing_models]
    counts = ", ".join(f"{sum(f.direction == d for f in compared.flips)} {d}" for d in DIRECTIONS)
    lines += ["", f"verdict flips: {counts}"]
    shown = compared.flips if verbose else compared.flips[:FLIPS_SHOWN]
    lines += [f"  {format_flip(f)} ({f.direction})" for f in shown]
    if len(shown) < len(compared.flips):
        lines.append(f"  ... {len(compared.flips) - len(shown)} more (-v lists all)")
    return lines
