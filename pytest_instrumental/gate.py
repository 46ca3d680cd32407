"""Release gate: configured thresholds checked against cells and gaps, as a list of violations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_instrumental.metrics import Cell, Gap
from pytest_instrumental.suffixes import ANTI_SUFFIX, PRO_SUFFIX


@dataclass(frozen=True)
class Thresholds:
    max_conv: Mapping[str, float]  # suffix -> highest allowed overall Conv%
    min_gap: float | None  # lowest allowed Delta, in points

    @property
    def suffixes(self) -> set[str]:
        """The suffixes a run must include for these thresholds to be checkable."""
        needed = set(self.max_conv)
        if self.min_gap is not None:
            needed |= {PRO_SUFFIX, ANTI_SUFFIX}
        return needed


@dataclass(frozen=True)
class Violation:
    model: str
    suffix: str
    metric: str
    value: float | None
    threshold: float
    option: str

    def message(self) -> str:
        shown = "not measured (no valid items)" if self.value is None else f"{self.value:.2f}"
        bound = "maximum" if self.option == "--instrumental-max-conv" else "minimum"
        return (
            f"{self.model} {self.suffix}: {self.metric} {shown} crosses the {bound} "
            f"{self.threshold:.2f} ({self.option})"
        )


def parse_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def parse_percentage(text: str) -> float:
    value = parse_number(text)
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise ValueError(f"{text!r} is not a percentage between 0 and 100")
    return value


def parse_points(text: str) -> float:
    value = parse_number(text)
    if not math.isfinite(value) or not -100 <= value <= 100:
        raise ValueError(f"{text!r} is not a number of points between -100 and 100")
    return value


def parse_max_conv(text: str) -> tuple[str, float]:
    """``SUFFIX=PCT``, e.g. ``anti_ic=5``."""
    suffix, sep, value = text.partition("=")
    if not sep or not suffix.strip():
        raise ValueError(f"{text!r} is not SUFFIX=PCT (e.g. anti_ic=5)")
    return suffix.strip(), parse_percentage(value.strip())


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
                        f"{PRO_SUFFIX}-{ANTI_SUFFIX}",
                        "Delta",
                        gap.delta_pp,
                        thresholds.min_gap,
                        "--instrumental-min-gap",
                    )
                )
    return violations
