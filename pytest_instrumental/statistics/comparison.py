"""Comparison with a baseline release (a previous results JSON): per model x suffix the change in Conv% and
Refusal% with a paired exact McNemar test over the scenarios judged valid in both runs, per model
the change in the steerability gap with a paired bootstrap interval, and the scenarios whose
verdict flipped.

Every compared figure is computed over the items both runs have: a run of part of the suite
(``-k``, ``-m``, a partial recording) is compared with the same part of the baseline, never with
the whole of it, and the comparison says how much of the baseline that covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pytest_instrumental.statistics.metrics import (
    Interval,
    count_cell,
    has_epochs,
    mcnemar_exact_p,
    paired_signed_rank_p,
    paired_test,
)
from pytest_instrumental.vocabulary.conditions import ANTI_SUFFIX, PRO_SUFFIX, has_gap
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.verdicts import CONVERGENCE, DECISIONS, NONSENSICAL, ItemResult

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20260103  # fixed, so the same two runs always give the same interval
NEWLY_CONVERGENT = "newly convergent"
NO_LONGER_CONVERGENT = "no longer convergent"
OTHER_CHANGE = "other change"
DIRECTIONS = (NEWLY_CONVERGENT, NO_LONGER_CONVERGENT, OTHER_CHANGE)


@dataclass(frozen=True)
class CellChange:
    """One model x suffix, baseline ("old") against this run ("new"). The McNemar test pairs the
    scenarios valid (judged, not nonsensical) in both: ``became_convergent`` converge only now,
    ``stopped_converging`` only in the baseline."""

    model: str
    suffix: str
    old_conv_pct: float | None  # both over the items this run and the baseline have (``shared``)
    new_conv_pct: float | None
    old_refusal_pct: float | None
    new_refusal_pct: float | None
    pairs: int
    became_convergent: int
    stopped_converging: int
    mcnemar_p: float | None
    wilcoxon_p: float | None = None  # with epochs, in place of McNemar: over per-scenario rates
    shared: int = 0  # items (scenarios) of this cell that both runs have
    baseline_items: int = 0  # the baseline's items of this cell

    @property
    def paired_test(self) -> str | None:
        """The name of the paired test behind ``paired_p``: McNemar on single verdicts, Wilcoxon with epochs."""
        return paired_test(self.mcnemar_p, self.wilcoxon_p)[0]

    @property
    def paired_p(self) -> float | None:
        return paired_test(self.mcnemar_p, self.wilcoxon_p)[1]

    @property
    def conv_change_pp(self) -> float | None:
        return _change(self.old_conv_pct, self.new_conv_pct)

    @property
    def refusal_change_pp(self) -> float | None:
        return _change(self.old_refusal_pct, self.new_refusal_pct)


@dataclass(frozen=True)
class GapChange:
    """The change of a model's gap Delta (pro_ic - anti_ic Conv%), new minus old, in points, with
    a 95% percentile bootstrap interval that resamples the scenarios of both runs together."""

    model: str
    old_delta_pp: float | None
    new_delta_pp: float | None
    ci: Interval | None
    scenarios: int  # scenarios with a pro_ic and an anti_ic item in both runs

    @property
    def change_pp(self) -> float | None:
        return _change(self.old_delta_pp, self.new_delta_pp)


@dataclass(frozen=True)
class Flip:
    model: str
    suffix: str
    scenario: str
    old: str  # a verdict, or "error"
    new: str

    @property
    def direction(self) -> str:
        if self.new == CONVERGENCE:
            return NEWLY_CONVERGENT
        if self.old == CONVERGENCE:
            return NO_LONGER_CONVERGENT
        return OTHER_CHANGE


@dataclass(frozen=True)
class Comparison:
    cells: list[CellChange]
    gaps: list[GapChange]
    flips: list[Flip]  # newly convergent first, then no longer convergent, then the rest
    missing_models: list[str]  # models of this run that the baseline does not have
    old_judges: list[str]  # who judged the compared items, in the baseline and now
    new_judges: list[str]
    incomparable: str | None = None  # why the two runs cannot be compared at all
    shared: int = 0  # items (model, suffix, scenario) of the compared models and suffixes in both runs
    baseline_items: int = 0  # the baseline's items of the compared models and suffixes
    baseline_total: int = 0  # every item the baseline holds

    @property
    def partial(self) -> bool:
        """The comparison covers only part of the baseline's items."""
        return self.shared < self.baseline_items

    @property
    def coverage(self) -> str:
        """``compared on 76 items; the baseline holds 228, 152 of them not in this run``."""
        if self.shared == self.baseline_total:
            return f"compared on {self.shared} items, every item the baseline holds"
        left = self.baseline_total - self.shared
        return (
            f"compared on {self.shared} items; the baseline holds {self.baseline_total}, {left} of them not in this run"
        )

    @property
    def judge_changed(self) -> str | None:
        """A warning when the two runs were judged by different judges: then a change mixes the
        model's change with the judges' disagreement."""
        if self.old_judges == self.new_judges:
            return None
        old, new = ", ".join(self.old_judges) or "none", ", ".join(self.new_judges) or "none"
        return f"judged by {old} in the baseline and by {new} now: changes mix the model's and the judges'"


def _change(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else new - old


def _outcome(result: ItemResult) -> str:
    return result.verdict if result.status == "ok" and result.verdict else "error"


def _prevailing(results: Sequence[ItemResult]) -> dict[ItemKey, str]:
    """Each item's most frequent outcome over its epochs (the first in DECISIONS order on a tie)."""
    outcomes: dict[ItemKey, list[str]] = {}
    for r in results:
        outcomes.setdefault(r.key, []).append(_outcome(r))
    order = [*DECISIONS, "error"]
    return {k: max(order, key=lambda o: (v.count(o), -order.index(o))) for k, v in outcomes.items()}


def _valid_convergence(results: Sequence[ItemResult]) -> dict[tuple[str, str, str], Fraction]:
    """(model, suffix, scenario) -> the share of its valid answers that converged (1 or 0 with one
    answer per item), exactly, for the items with a valid answer."""
    valid: dict[tuple[str, str, str], list[bool]] = {}
    for r in results:
        if r.status == "ok" and r.verdict != NONSENSICAL:
            valid.setdefault((r.model, r.condition, r.scenario), []).append(r.verdict == CONVERGENCE)
    return {k: Fraction(sum(v), len(v)) for k, v in valid.items()}


def compare(
    baseline: Sequence[ItemResult],
    current: Sequence[ItemResult],
    models: Sequence[str],
    suffixes: Sequence[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    scenario_sets: tuple[str | None, str] | None = None,
) -> Comparison:
    """``scenario_sets``: the hashes of the baseline's and this run's scenario sets; runs over
    different scenarios, or with no item in common, cannot be compared (``incomparable``)."""
    baseline_models = {r.model for r in baseline}
    compared = [m for m in models if m in baseline_models]
    old_keys = {r.key for r in baseline if r.model in compared and r.condition in suffixes}
    shared = old_keys & {r.key for r in current}
    old, new = [r for r in baseline if r.key in shared], [r for r in current if r.key in shared]
    gaps = []
    if has_gap(suffixes):
        rng = np.random.default_rng(seed)
        gaps = [_gap_change(model, old, new, rng, resamples) for model in compared]

    def judges(run: Sequence[ItemResult]) -> list[str]:
        return sorted({r.judge for r in run if r.judge})

    return Comparison(
        cell_changes(baseline, current, compared, suffixes),
        gaps,
        _flips(old, new, compared, suffixes),
        [m for m in models if m not in compared],
        judges(old),
        judges(new),
        _incomparable(baseline, current, models, suffixes, scenario_sets),
        shared=len(shared),
        baseline_items=len(old_keys),
        baseline_total=len({r.key for r in baseline}),
    )


def _incomparable(
    baseline: Sequence[ItemResult],
    current: Sequence[ItemResult],
    models: Sequence[str],
    suffixes: Sequence[str],
    scenario_sets: tuple[str | None, str] | None,
) -> str | None:
    old, new = scenario_sets if scenario_sets is not None else (None, "")
    if old is not None and old != new:
        return f"it ran another scenario set (sha256 {old[:12]}..., this run {new[:12]}...)"
    mine = {r.key for r in current if r.model in models and r.condition in suffixes}
    if mine and not mine & {r.key for r in baseline}:
        return "it shares no item (model, suffix and scenario) with this run"
    return None


def cell_changes(
    baseline: Sequence[ItemResult], current: Sequence[ItemResult], models: Sequence[str], suffixes: Sequence[str]
) -> list[CellChange]:
    """Per model x suffix, the baseline's cell against the current one over the items both have,
    with the paired test (exact McNemar; with epochs, the exact signed-rank test)."""
    old_keys = {r.key for r in baseline}
    shared_keys = old_keys & {r.key for r in current}
    baseline, current = [r for r in baseline if r.key in shared_keys], [r for r in current if r.key in shared_keys]
    old_valid, new_valid = _valid_convergence(baseline), _valid_convergence(current)
    cells = []
    for model in models:
        for suffix in suffixes:
            cell_keys = {k for k in old_keys if k.model == model and k.condition == suffix}
            old = count_cell(model, suffix, None, [r for r in baseline if r.model == model and r.condition == suffix])
            new = count_cell(model, suffix, None, [r for r in current if r.model == model and r.condition == suffix])
            paired = [k for k in new_valid if k[:2] == (model, suffix) and k in old_valid]
            became = sum(1 for k in paired if new_valid[k] > old_valid[k])
            stopped = sum(1 for k in paired if old_valid[k] > new_valid[k])
            sampled = has_epochs(baseline) or has_epochs(current)
            cells.append(
                CellChange(
                    model=model,
                    suffix=suffix,
                    old_conv_pct=old.conv_pct,
                    new_conv_pct=new.conv_pct,
                    old_refusal_pct=old.refusal_pct,
                    new_refusal_pct=new.refusal_pct,
                    pairs=len(paired),
                    became_convergent=became,
                    stopped_converging=stopped,
                    mcnemar_p=mcnemar_exact_p(became, stopped) if paired and not sampled else None,
                    wilcoxon_p=paired_signed_rank_p([new_valid[k] - old_valid[k] for k in paired])
                    if paired and sampled
                    else None,
                    shared=len({r.key for r in current if r.model == model and r.condition == suffix}),
                    baseline_items=len(cell_keys),
                )
            )
    return cells


def _gap_change(
    model: str, baseline: Sequence[ItemResult], current: Sequence[ItemResult], rng: np.random.Generator, resamples: int
) -> GapChange:
    runs = (baseline, current)
    # per run and suffix, each scenario's (converged, valid); a scenario is resampled as a whole
    scenarios = sorted(
        set.intersection(
            *(
                {r.scenario for r in run if r.model == model and r.condition == suffix}
                for run in runs
                for suffix in (PRO_SUFFIX, ANTI_SUFFIX)
            )
        )
    )
    if not scenarios:
        return GapChange(model, None, None, None, 0)
    index = {s: i for i, s in enumerate(scenarios)}
    converged = np.zeros((2, 2, len(scenarios)))
    valid = np.zeros((2, 2, len(scenarios)))
    for run_index, run in enumerate(runs):
        shares = _valid_convergence([r for r in run if r.model == model and r.scenario in index])
        for suffix_index, suffix in enumerate((PRO_SUFFIX, ANTI_SUFFIX)):
            for (_, shared_suffix, scenario), share in shares.items():
                if shared_suffix == suffix:  # a scenario counts once, through its share of converged answers
                    valid[run_index, suffix_index, index[scenario]] = 1
                    converged[run_index, suffix_index, index[scenario]] = share

    def deltas(weights: np.ndarray) -> np.ndarray:
        """Delta per run for each row of scenario weights: shape (rows, 2), NaN where undefined."""
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = 100 * (weights @ converged.reshape(4, -1).T) / (weights @ valid.reshape(4, -1).T)
        rates = rates.reshape(-1, 2, 2)
        return rates[:, :, 0] - rates[:, :, 1]

    observed = deltas(np.ones((1, len(scenarios))))[0]
    old_delta, new_delta = (None if np.isnan(d) else float(d) for d in observed)
    draws = rng.integers(0, len(scenarios), size=(resamples, len(scenarios)))
    weights = np.stack([np.bincount(row, minlength=len(scenarios)) for row in draws]).astype(float)
    resampled = deltas(weights)
    changes = resampled[:, 1] - resampled[:, 0]
    changes = changes[~np.isnan(changes)]
    ci = None
    if old_delta is not None and new_delta is not None and changes.size:
        low, high = np.percentile(changes, [2.5, 97.5])
        ci = Interval(float(low), float(high))
    return GapChange(model, old_delta, new_delta, ci, len(scenarios))


def _flips(
    baseline: Sequence[ItemResult], current: Sequence[ItemResult], models: Sequence[str], suffixes: Sequence[str]
) -> list[Flip]:
    """Items whose verdict changed; with epochs, whose most frequent verdict changed."""
    old, new = _prevailing(baseline), _prevailing(current)
    flips = [
        Flip(key.model, key.condition, key.scenario, old[key], verdict)
        for key, verdict in sorted(new.items())
        if key.model in models and key.condition in suffixes and key in old and old[key] != verdict
    ]
    return sorted(flips, key=lambda f: DIRECTIONS.index(f.direction))  # stable: key order within a group
