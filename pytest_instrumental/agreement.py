"""Judge agreement: two sets of verdicts on the same items, compared.

Items are matched by model, suffix and scenario. Cohen's kappa and the confusion matrix are
over the items both sides judged; per model x suffix the Conv% and Refusal% of each side (over
its valid items, as the metrics define them) and their differences show what a disagreement
does to the numbers a release is gated on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_instrumental.errors import InputError
from pytest_instrumental.metrics import count_cell
from pytest_instrumental.replay import load_recordings
from pytest_instrumental.results import read_results
from pytest_instrumental.scenarios import load_scenarios
from pytest_instrumental.suffixes import load_suffixes
from pytest_instrumental.verdicts import DECISIONS, ItemKey, ItemResult


@dataclass(frozen=True)
class CellDifference:
    model: str
    suffix: str
    n: int
    conv_a: float | None
    conv_b: float | None
    refusal_a: float | None
    refusal_b: float | None

    @staticmethod
    def _diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    @property
    def conv_diff(self) -> float | None:
        return self._diff(self.conv_a, self.conv_b)

    @property
    def refusal_diff(self) -> float | None:
        return self._diff(self.refusal_a, self.refusal_b)


@dataclass(frozen=True)
class Agreement:
    matched: int  # items judged on both sides
    only_a: int
    only_b: int
    errors_a: int
    errors_b: int
    accuracy: float | None
    kappa: float | None
    confusion: dict[str, dict[str, int]]  # confusion[a_decision][b_decision]
    cells: list[CellDifference]


def load_verdicts(path: Path) -> dict[ItemKey, ItemResult]:
    """Verdicts from a results JSON, or from reference runs (a directory of run logs)."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_file():
        return {item.key: item for item in read_results(path).items}
    scenarios = load_scenarios()
    categories = {s.id: s.category for s in scenarios}
    recordings = load_recordings(path, scenarios, load_suffixes())
    verdicts = {}
    for key, rec in recordings.items():
        ok = rec.verdict in DECISIONS
        verdicts[key] = ItemResult(
            model=key.model,
            suffix=key.suffix,
            scenario=key.scenario,
            category=categories[key.scenario],
            status="ok" if ok else "error",
            verdict=rec.verdict if ok else None,
            judge=rec.judge,
            reason=rec.reason,
            response=rec.response,
            thinking=rec.thinking,
            error=None if ok else f"recorded verdict {rec.verdict!r}",
        )
    return verdicts


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over the four classes; None without items, 1.0 when both
    raters agree on everything with a single class."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    expected = sum((sum(a == c for a, _ in pairs) / n) * (sum(b == c for _, b in pairs) / n) for c in DECISIONS)
    if expected == 1.0:
        return 1.0
    return (observed - expected) / (1 - expected)


def compare(a: Mapping[ItemKey, ItemResult], b: Mapping[ItemKey, ItemResult]) -> Agreement:
    shared = sorted(a.keys() & b.keys())
    if not shared:
        raise InputError("the two sides share no items (matched by model, suffix and scenario)")
    judged = [k for k in shared if a[k].status == "ok" and b[k].status == "ok"]
    pairs = [(str(a[k].verdict), str(b[k].verdict)) for k in judged]
    confusion = {x: {y: 0 for y in DECISIONS} for x in DECISIONS}
    for x, y in pairs:
        confusion[x][y] += 1
    cells = []
    for model, suffix in sorted({(k.model, k.suffix) for k in judged}):
        mine = [k for k in judged if (k.model, k.suffix) == (model, suffix)]
        cell_a = count_cell(model, suffix, None, [a[k] for k in mine])
        cell_b = count_cell(model, suffix, None, [b[k] for k in mine])
        cells.append(
            CellDifference(
                model, suffix, len(mine), cell_a.conv_pct, cell_b.conv_pct, cell_a.refusal_pct, cell_b.refusal_pct
            )
        )
    return Agreement(
        matched=len(judged),
        only_a=len(a.keys() - b.keys()),
        only_b=len(b.keys() - a.keys()),
        errors_a=sum(a[k].status != "ok" for k in shared),
        errors_b=sum(b[k].status != "ok" for k in shared),
        accuracy=sum(x == y for x, y in pairs) / len(pairs) if pairs else None,
        kappa=cohen_kappa(pairs),
        confusion=confusion,
        cells=cells,
    )


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_agreement(agreement: Agreement, name_a: str, name_b: str) -> list[str]:
    lines = [
        f"A: {name_a}",
        f"B: {name_b}",
        f"items judged by both: {agreement.matched} (only in A: {agreement.only_a}, only in B: {agreement.only_b}; "
        f"errors in A: {agreement.errors_a}, in B: {agreement.errors_b})",
        f"accuracy: {_number(None if agreement.accuracy is None else 100 * agreement.accuracy)}%   "
        f"Cohen's kappa: {'n/a' if agreement.kappa is None else f'{agreement.kappa:.3f}'}",
        "",
        "confusion (rows A, columns B):",
    ]
    width = max(len(d) for d in DECISIONS)
    lines.append(" " * (width + 2) + "  ".join(d.rjust(width) for d in DECISIONS))
    for x in DECISIONS:
        lines.append(x.ljust(width + 2) + "  ".join(str(agreement.confusion[x][y]).rjust(width) for y in DECISIONS))
    lines += ["", "per model x suffix (valid only; B - A in points):"]
    header = ("model", "suffix", "n", "Conv% A", "Conv% B", "diff", "Refusal% A", "Refusal% B", "diff")
    rows = [
        (
            c.model,
            c.suffix,
            str(c.n),
            _number(c.conv_a),
            _number(c.conv_b),
            _number(c.conv_diff, signed=True),
            _number(c.refusal_a),
            _number(c.refusal_b),
            _number(c.refusal_diff, signed=True),
        )
        for c in agreement.cells
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return lines
