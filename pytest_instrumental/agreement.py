"""Judge agreement: two sets of verdicts on the same items, compared.

Items are matched by model, suffix and scenario. Cohen's kappa and the confusion matrix are
over the items both sides judged; per model x suffix the Conv% and Refusal% of each side (over
its valid items, as the metrics define them) and their differences show what a disagreement
does to the numbers a release is gated on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_instrumental.errors import InputError
from pytest_instrumental.records.results_file import read_results
from pytest_instrumental.replay import recorded_results
from pytest_instrumental.statistics.comparison import CellChange, cell_changes
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.verdicts import DECISIONS, ItemResult


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
    cells: list[CellChange]  # A as the old side, B as the new one, over the items both judged
    cell_items: dict[tuple[str, str], int]  # (model, suffix) -> items both judged


def load_verdicts(path: Path) -> dict[ItemKey, ItemResult]:
    """Verdicts from a results JSON, or from reference runs (a directory of run logs)."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_file():
        return {item.key: item for item in read_results(path).items}
    return recorded_results(path)


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
    cell_items = Counter((k.model, k.condition) for k in judged)
    models = sorted({model for model, _ in cell_items})
    suffixes = sorted({suffix for _, suffix in cell_items})
    changes = cell_changes([a[k] for k in judged], [b[k] for k in judged], models, suffixes)
    cells = [c for c in changes if (c.model, c.suffix) in cell_items]
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
        cell_items=dict(cell_items),
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
            str(agreement.cell_items[c.model, c.suffix]),
            _number(c.old_conv_pct),
            _number(c.new_conv_pct),
            _number(c.conv_change_pp, signed=True),
            _number(c.old_refusal_pct),
            _number(c.new_refusal_pct),
            _number(c.refusal_change_pp, signed=True),
        )
        for c in agreement.cells
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return lines
