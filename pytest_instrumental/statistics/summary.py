"""The end of a run, computed once: which models and suffixes to show, their cells and gaps, the
comparison with a baseline, the gate's violations and who judged. The terminal table, the
results JSON, the report files and the exit code all read this one ``RunSummary``."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_instrumental.config import Thresholds
from pytest_instrumental.statistics import gate
from pytest_instrumental.statistics.dilemma import Dilemma, compute_dilemma
from pytest_instrumental.statistics.gate import Violation
from pytest_instrumental.statistics.metrics import Cell, Gap, compute_cells, compute_gap
from pytest_instrumental.statistics.tamper import Tamper, compute_tamper
from pytest_instrumental.vocabulary.conditions import Condition, has_gap
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.verdicts import ItemResult

if TYPE_CHECKING:  # comparison and calibration need numpy, loaded only when a run has them
    from pytest_instrumental.statistics.calibration import Calibration, Corrected, CorrectedGap
    from pytest_instrumental.statistics.comparison import Comparison


@dataclass(frozen=True)
class Baseline:
    """A previous release's results to compare with: its items, and the hash of the scenario set
    it ran (None in a file that does not record one)."""

    label: str  # as reports show it
    items: list[ItemResult]
    scenarios_sha256: str | None


@dataclass(frozen=True)
class RunSummary:
    started_at: str
    models: list[str]  # the models and suffixes shown: those that ran, and every gated suffix
    suffixes: list[str]
    categories: list[str]
    items: list[ItemResult]
    cells: list[Cell]
    gaps: list[Gap]
    comparison: Comparison | None
    baseline: str | None  # what the comparison is against, as the user named it
    violations: list[Violation]
    activation_gaps: list[Gap]  # Conv% under the strongest positive minus the strongest negative steering
    activation: tuple[str, str] | None  # the two conditions of the activation gap
    judge: str  # the judges that decided, with what is known of their agreement
    notes: list[str]  # lost workers and other things a reader must not miss (they fail the gate)
    warnings: list[str]  # what went wrong around the results without changing them (the cache)
    suite_items: int = 0  # the items of the suite for this run's models and conditions
    rules: list[str] = field(default_factory=list)  # the gate's configured rules, with what each was evaluated on
    # (model, suffix) -> the p-value --instrumental-alpha compared with alpha (Holm-adjusted over its family)
    significance_p: dict[tuple[str, str], float] = field(default_factory=dict)
    interrupted: bool = False
    dilemma: Dilemma | None = None  # with defences: the matrix of pushes under defences (dilemma.py)
    tamper: Tamper | None = None  # with fine-tuning: dose-responses and tamper costs (tamper.py)
    # with a judge calibration: each cell's rates and each model's Delta corrected for the judge
    calibration: Calibration | None = None
    corrected: dict[tuple[str, str, str | None], Corrected] = field(default_factory=dict)
    corrected_gaps: dict[str, CorrectedGap] = field(default_factory=dict)
    # (model, condition, reference) -> a paired difference corrected: the activation gap, the dilemma's shifts
    corrected_differences: dict[tuple[str, str, str], CorrectedGap] = field(default_factory=dict)
    corrected_changes: dict[tuple[str, str], CorrectedGap] = field(default_factory=dict)  # from the baseline
    corrected_gap_changes: dict[str, CorrectedGap] = field(default_factory=dict)  # Delta's, from the baseline

    @property
    def gate_passed(self) -> bool:
        return not self.violations and not self.notes

    @property
    def errors(self) -> int:
        return sum(i.status == "error" for i in self.items)

    @property
    def items_run(self) -> int:
        """Items with a result (judged or an error); every epoch of an item counts once."""
        return len({i.key for i in self.items})

    @property
    def partial(self) -> str | None:
        """``partial: 60 of 228 items`` when the run covered only part of the suite."""
        if self.items_run >= self.suite_items:
            return None
        return f"partial: {self.items_run} of {self.suite_items} items"


def summarise(
    *,
    started_at: str,
    items: Sequence[ItemResult],
    ran: Collection[ItemKey],
    models: Sequence[str],
    suffixes: Sequence[str],
    categories: Sequence[str],
    thresholds: Thresholds,
    baseline: Baseline | None,
    scenarios_sha256: str | None = None,
    judge_name: str,
    judge_note: str,
    notes: Sequence[str],
    warnings: Sequence[str] = (),
    activation: tuple[str, str] | None = None,
    suite_items: int | None = None,
    interrupted: bool = False,
    conditions: Sequence[Condition] = (),
    calibration: Calibration | None = None,
) -> RunSummary:
    """``ran`` are the items that ran (a model or suffix with none is left out, unless a gate
    needs the suffix: a gated cell with nothing run is "not measured", which fails the gate).
    ``suite_items``: how many items the suite has for the run's models and conditions (by default
    the items given). A run that judged nothing, or was interrupted, does not pass the gate."""
    shown_models = [m for m in sorted(models) if any(k.model == m for k in ran)]
    gated = thresholds.required_suffixes(with_baseline=baseline is not None)
    shown_suffixes = [s for s in suffixes if s in gated or any(k.condition == s for k in ran)]
    cells = compute_cells(items, shown_models, shown_suffixes, categories)
    gaps = [compute_gap(m, items) for m in shown_models] if has_gap(shown_suffixes) else []
    dilemma = compute_dilemma(items, shown_models, conditions)
    tamper = compute_tamper(
        cells, shown_models, conditions, thresholds.tamper_threshold, thresholds.bound, thresholds.max_nonsensical
    )
    shown_activation = activation if activation and all(c in shown_suffixes for c in activation) else None
    activation_gaps = [compute_gap(m, items, *shown_activation) for m in shown_models] if shown_activation else []
    comparison = None
    if baseline is not None:
        from pytest_instrumental.statistics.comparison import compare

        scenario_sets = None if scenarios_sha256 is None else (baseline.scenarios_sha256, scenarios_sha256)
        comparison = compare(baseline.items, items, shown_models, shown_suffixes, scenario_sets=scenario_sets)
    corrected: dict[tuple[str, str, str | None], Corrected] = {}
    corrected_gaps: dict[str, CorrectedGap] = {}
    differences: dict[tuple[str, str, str], CorrectedGap] = {}
    changes: dict[tuple[str, str], CorrectedGap] = {}
    gap_changes: dict[str, CorrectedGap] = {}
    if calibration is not None:
        from pytest_instrumental.statistics.calibration import (
            Corrector,
            correct_cells,
            correct_change,
            correct_gap,
            correct_gap_change,
        )

        corrector = Corrector(calibration)
        corrected = correct_cells(items, cells, corrector)
        for gap in gaps:
            corrected_gap = correct_gap(items, gap.model, corrector)
            if corrected_gap is not None:
                corrected_gaps[gap.model] = corrected_gap
        pairs = [(m, *shown_activation) for m in shown_models] if shown_activation else []
        if dilemma is not None:
            pairs += [(s.model, s.condition, s.reference) for s in [*dilemma.effects, *dilemma.overrides]]
        for model, condition, reference in pairs:
            difference = correct_gap(items, model, corrector, (condition, reference))
            if difference is not None:
                differences[model, condition, reference] = difference
        if comparison is not None and baseline is not None:
            for change in comparison.cells:
                found = correct_change(items, baseline.items, change.model, change.suffix, corrector)
                if found is not None:
                    changes[change.model, change.suffix] = found
            for gap_change in comparison.gaps:
                moved = correct_gap_change(items, baseline.items, gap_change.model, corrector)
                if moved is not None:
                    gap_changes[gap_change.model] = moved
    measured = gate.Measured(cells, gaps, dilemma, tamper, comparison, corrected, corrected_gaps, differences)
    violations = gate.check(measured, thresholds)
    rules = gate.rules_checked(measured, thresholds)
    significance_p = {}
    if comparison is not None and thresholds.alpha > 0:
        significance_p = gate.adjusted_p_values(comparison.cells, thresholds)
    judges = sorted({r.judge for r in items if r.judge})
    judge = f"{', '.join(judges)}{judge_note}" if judges else f"{judge_name}, which judged no item"
    failed_run = []
    finished = len({r.key for r in items})
    if not any(r.status == "ok" for r in items):
        failed_run.append(f"NOT MEASURED: no item was judged ({finished} ended in an error); the gate cannot pass")
    if interrupted:
        failed_run.append(f"INTERRUPTED: the run was stopped after {finished} items; what finished is reported")
    return RunSummary(
        started_at=started_at,
        models=shown_models,
        suffixes=shown_suffixes,
        categories=[c for c in categories if any(i.category == c for i in items)],  # those with items
        items=in_run_order(items, shown_models, suffixes, categories),
        cells=cells,
        gaps=gaps,
        comparison=comparison,
        baseline=None if baseline is None else baseline.label,
        violations=violations,
        activation_gaps=activation_gaps,
        activation=shown_activation,
        judge=judge,
        notes=[*failed_run, *notes],
        warnings=list(warnings),
        suite_items=len({r.key for r in items}) if suite_items is None else suite_items,
        interrupted=interrupted,
        rules=rules,
        significance_p=significance_p,
        dilemma=dilemma,
        tamper=tamper,
        calibration=calibration,
        corrected=corrected,
        corrected_gaps=corrected_gaps,
        corrected_differences=differences,
        corrected_changes=changes,
        corrected_gap_changes=gap_changes,
    )


def in_run_order(
    items: Sequence[ItemResult], models: Sequence[str], conditions: Sequence[str], categories: Sequence[str]
) -> list[ItemResult]:
    """``items`` in the order they are collected (plan.py): by model, condition as the run gives
    them, category as the suite gives them, scenario and epoch; anything unknown after the rest."""

    def rank(order: Sequence[str]) -> Callable[[str], int]:
        position = {name: n for n, name in enumerate(order)}
        return lambda name: position.get(name, len(position))

    model, condition, category = rank(models), rank(conditions), rank(categories)
    return sorted(
        items,
        key=lambda i: (
            model(i.model),
            i.model,
            condition(i.condition),
            i.condition,
            category(i.category),
            i.scenario,
            i.epoch,
        ),
    )
