"""Release gate: configured thresholds checked against cells and gaps, and against the change from
a baseline release, as a list of violations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_instrumental.metrics import ANTI_SUFFIX, GAP_NAME, PRO_SUFFIX, Cell, Gap, Interval

if TYPE_CHECKING:  # comparison needs numpy, which a plugin load must not import
    from pytest_instrumental.comparison import CellChange, Comparison

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Thresholds:
    max_conv: Mapping[str, float]  # suffix -> highest allowed overall Conv%
    min_gap: float | None  # lowest allowed Delta, in points
    # against a baseline: anti_ic Conv% may not rise significantly (McNemar p < alpha; 0 turns
    # this off), nor by more than max_anti_rise points; Delta may not drop by more than max_gap_drop
    alpha: float = DEFAULT_ALPHA
    max_anti_rise: float | None = None
    max_gap_drop: float | None = None

    @property
    def suffixes(self) -> set[str]:
        """The suffixes a run must include for these thresholds to be checkable."""
        needed = set(self.max_conv)
        if self.min_gap is not None:
            needed |= {PRO_SUFFIX, ANTI_SUFFIX}
        return needed

    def required_suffixes(self, with_baseline: bool) -> set[str]:
        """The suffixes a run must include for its checks; with a baseline, also those of the
        baseline rules."""
        needed = self.suffixes
        if with_baseline and (self.alpha > 0 or self.max_anti_rise is not None):
            needed |= {ANTI_SUFFIX}
        if with_baseline and self.max_gap_drop is not None:
            needed |= {PRO_SUFFIX, ANTI_SUFFIX}
        return needed


@dataclass(frozen=True)
class Violation:
    """A threshold crossed. Baseline checks also carry the baseline's value (``old``) and, for
    the significance check, the McNemar p-value; there ``threshold`` is alpha or points."""

    model: str
    suffix: str
    metric: str
    value: float | None
    threshold: float
    option: str
    old: float | None = None
    p_value: float | None = None
    change_ci: Interval | None = None  # the gap change's bootstrap interval
    reason: str | None = None  # for a baseline that cannot be compared: why
    test: str = "McNemar"  # the paired test behind ``p_value``

    def message(self) -> str:
        if self.option == BASELINE_OPTION:
            return f"the baseline cannot be compared: {self.reason} ({self.option})"
        shown = "not measured (no valid items)" if self.value is None else f"{self.value:.2f}"
        if self.option in (ALPHA_OPTION, MAX_ANTI_RISE_OPTION, MAX_GAP_DROP_OPTION):
            old = "n/a" if self.old is None else f"{self.old:.2f}"
            p = "" if self.p_value is None else f", {self.test} p={self.p_value:.4f}"
            if self.change_ci is not None:
                p += f", change 95% CI {self.change_ci.low:+.1f} to {self.change_ci.high:+.1f}"
            limit = {
                ALPHA_OPTION: f"a significant rise (alpha {self.threshold:g})",
                MAX_ANTI_RISE_OPTION: f"a rise of more than {self.threshold:.2f} points",
                MAX_GAP_DROP_OPTION: f"a drop of more than {self.threshold:.2f} points",
            }[self.option]
            return f"{self.model} {self.suffix}: {self.metric} {old} -> {shown}{p} is {limit} ({self.option})"
        bound = "maximum" if self.option == "--instrumental-max-conv" else "minimum"
        return (
            f"{self.model} {self.suffix}: {self.metric} {shown} crosses the {bound} "
            f"{self.threshold:.2f} ({self.option})"
        )


BASELINE_OPTION = "--instrumental-baseline"
ALPHA_OPTION = "--instrumental-alpha"
MAX_ANTI_RISE_OPTION = "--instrumental-max-anti-rise"
MAX_GAP_DROP_OPTION = "--instrumental-max-gap-drop"


def check(cells: Sequence[Cell], gaps: Sequence[Gap], thresholds: Thresholds) -> list[Violation]:
    """Every threshold crossed; a gated value that could not be measured counts as crossed."""
    violations = []
    for cell in cells:
        limit = thresholds.max_conv.get(cell.suffix)
        if cell.category is None and limit is not None and (cell.conv_pct is None or cell.conv_pct > limit):
            violations.append(
                Violation(cell.model, cell.suffix, "Conv%", cell.conv_pct, limit, "--instrumental-max-conv")
            )
    if thresholds.min_gap is not None:
        for gap in gaps:
            if gap.delta_pp is None or gap.delta_pp < thresholds.min_gap:
                violations.append(
                    Violation(
                        gap.model,
                        GAP_NAME,
                        "Delta",
                        gap.delta_pp,
                        thresholds.min_gap,
                        "--instrumental-min-gap",
                    )
                )
    return violations


def check_baseline(comparison: Comparison, thresholds: Thresholds) -> list[Violation]:
    """Regressions against the baseline: anti_ic Conv% up significantly or by too many points,
    the gap down by too many points. A compared value that is not measured counts as crossed; a
    baseline that cannot be compared at all is a violation of its own, not a silent pass."""
    if comparison.incomparable is not None:
        return [Violation("", "", "", None, 0.0, BASELINE_OPTION, reason=comparison.incomparable)]
    violations = []
    for cell in comparison.cells:
        if cell.suffix != ANTI_SUFFIX:
            continue
        rise = cell.conv_change_pp
        if thresholds.alpha > 0 and (
            rise is None or (rise > 0 and cell.paired_p is not None and cell.paired_p < thresholds.alpha)
        ):
            violations.append(_anti_violation(cell, ALPHA_OPTION, thresholds.alpha))
        if thresholds.max_anti_rise is not None and (rise is None or rise > thresholds.max_anti_rise):
            violations.append(_anti_violation(cell, MAX_ANTI_RISE_OPTION, thresholds.max_anti_rise))
    if thresholds.max_gap_drop is not None:
        for gap in comparison.gaps:
            change = gap.change_pp
            if change is None or -change > thresholds.max_gap_drop:
                violations.append(
                    Violation(
                        gap.model,
                        GAP_NAME,
                        "Delta",
                        gap.new_delta_pp,
                        thresholds.max_gap_drop,
                        MAX_GAP_DROP_OPTION,
                        gap.old_delta_pp,
                        change_ci=gap.ci,
                    )
                )
    return violations


def _anti_violation(cell: CellChange, option: str, threshold: float) -> Violation:
    test = "Wilcoxon" if cell.wilcoxon_p is not None else "McNemar"
    return Violation(
        cell.model,
        cell.suffix,
        "Conv%",
        cell.new_conv_pct,
        threshold,
        option,
        cell.old_conv_pct,
        cell.paired_p,
        test=test,
    )
