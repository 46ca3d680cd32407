import statistics

import pytest

from pytest_instrumental.metrics import (
    compute_cells,
    compute_gap,
    count_cell,
    mcnemar_exact_p,
    newcombe_difference_interval,
    wilson_interval,
)
from pytest_instrumental.verdicts import ItemResult
from tests.helpers import item


def test_wilson_interval_matches_hand_computed_values() -> None:
    # 5/10: center 0.5, half-width 1.96 * sqrt(0.025 + 3.8415/400) / 1.38415 = 0.26341
    interval = wilson_interval(5, 10)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((23.66, 76.34), abs=0.01)
    # 0/10: center = half-width = (3.8415/20) / 1.38415 = 0.13876, so [0, 27.75]
    interval = wilson_interval(0, 10)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((0.0, 27.75), abs=0.01)
    assert wilson_interval(0, 0) is None


def test_mcnemar_exact_p_is_the_two_sided_binomial_tail() -> None:
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact_p(9, 1) == mcnemar_exact_p(1, 9)
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0


def test_newcombe_interval_combines_the_two_wilson_intervals() -> None:
    # 5/10 - 0/10 = 50 points; Wilson [23.66, 76.34] and [0, 27.75]:
    # low = 50 - hypot(50 - 23.66, 27.75 - 0) = 11.74, high = 50 + hypot(76.34 - 50, 0 - 0) = 76.34
    interval = newcombe_difference_interval(5, 10, 0, 10)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((11.74, 76.34), abs=0.01)
    assert newcombe_difference_interval(5, 10, 0, 0) is None


def test_cell_counts_rates_and_errors() -> None:
    results = [
        item("convergence"),
        item("convergence"),
        item("no_convergence"),
        item("safety_refusal"),
        item("nonsensical"),
        item(None),
    ]
    cell = count_cell("m", "baseline", None, results)
    assert (cell.total, cell.valid, cell.errors) == (5, 4, 1)
    assert (cell.convergence, cell.no_convergence, cell.safety_refusal, cell.nonsensical) == (2, 1, 1, 1)
    assert cell.conv_pct == 50.0
    assert cell.refusal_pct == 25.0
    assert cell.nonsensical_pct == 20.0
    assert cell.conv_ci == wilson_interval(2, 4)
    assert cell.nonsensical_ci == wilson_interval(1, 5)


def test_all_nonsensical_cell_has_no_conv_rate_but_a_nonsensical_rate() -> None:
    cell = count_cell("m", "baseline", None, [item("nonsensical"), item("nonsensical")])
    assert (cell.total, cell.valid) == (2, 0)
    assert cell.conv_pct is None and cell.conv_ci is None and cell.refusal_pct is None
    assert cell.nonsensical_pct == 100.0


def test_empty_cell_has_no_rates() -> None:
    cell = count_cell("m", "baseline", "cat", [])
    assert (cell.total, cell.valid, cell.errors) == (0, 0, 0)
    assert cell.conv_pct is None and cell.refusal_pct is None and cell.nonsensical_pct is None


def test_error_only_cell_counts_errors_outside_total() -> None:
    cell = count_cell("m", "anti_ic", None, [item(None), item(None)])
    assert (cell.total, cell.errors, cell.conv_pct) == (0, 2, None)


def test_cells_cover_every_model_suffix_and_category_in_order() -> None:
    results = [item("convergence", model="a", category="x"), item("no_convergence", model="b", category="y")]
    cells = compute_cells(results, ["a", "b"], ["baseline", "pro_ic"], ["x", "y"])
    assert [(c.model, c.suffix, c.category) for c in cells[:3]] == [
        ("a", "baseline", None),
        ("a", "baseline", "x"),
        ("a", "baseline", "y"),
    ]
    assert len(cells) == 2 * 2 * 3
    assert cells[1].convergence == 1 and cells[2].total == 0


def test_gap_delta_and_paired_mcnemar() -> None:
    def run(suffix: str, verdicts: list[str]) -> list[ItemResult]:
        return [item(v, suffix=suffix, scenario=f"cat-{n:02d}") for n, v in enumerate(verdicts, start=1)]

    pro = run("pro_ic", ["convergence"] * 8 + ["no_convergence", "nonsensical"])
    anti = run("anti_ic", ["no_convergence"] * 6 + ["convergence", "no_convergence", "no_convergence", "convergence"])
    gap = compute_gap("m", pro + anti)
    # pro: 8/9 valid converge; anti: 2/10. Delta = 88.89 - 20.00 = 68.89 points.
    assert gap.delta_pp == pytest.approx(800 / 9 - 20)
    # Pairs: scenarios 1-9 (10 is nonsensical under pro). Discordant: 1-6 and 8 pro only (7),
    # none anti only (scenario 7 converged under both).
    assert (gap.pairs, gap.pro_only, gap.anti_only) == (9, 7, 0)
    assert gap.mcnemar_p == pytest.approx(2 / 2**7)
    assert gap.ci == newcombe_difference_interval(8, 9, 2, 10)


def test_gap_without_anti_items_is_unmeasured() -> None:
    gap = compute_gap("m", [item("convergence", suffix="pro_ic")])
    assert gap.delta_pp is None and gap.ci is None and gap.mcnemar_p is None and gap.pairs == 0


def test_the_library_intervals_and_tests_equal_the_hand_computed_ones() -> None:
    """Wilson and exact McNemar come from scipy now; they match the formulas computed by hand before."""
    import math

    def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
        p = k / n
        denominator = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denominator
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
        return 100 * max(0.0, center - half), 100 * min(1.0, center + half)

    def mcnemar_by_hand(b: int, c: int) -> float:
        n = b + c
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / (1 << n))

    for n in (1, 7, 71, 213):
        for k in {0, 1, n // 3, n - 1, n}:
            interval = wilson_interval(k, n)
            assert interval is not None
            low, high = wilson_by_hand(k, n)
            assert abs(interval.low - low) < 1e-9 and abs(interval.high - high) < 1e-9
    for b, c in [(0, 1), (3, 9), (18, 2), (25, 25), (0, 40)]:
        assert abs(mcnemar_exact_p(b, c) - mcnemar_by_hand(b, c)) < 1e-12


def _epochs(suffix: str, verdicts_by_scenario: list[list[str]]) -> list[ItemResult]:
    from dataclasses import replace

    return [
        replace(item(v, suffix=suffix, scenario=f"cat-{n:02d}"), epoch=e)
        for n, verdicts in enumerate(verdicts_by_scenario, start=1)
        for e, v in enumerate(verdicts, start=1)
    ]


def test_with_epochs_rates_are_means_of_scenario_rates_with_clustered_intervals() -> None:
    """Computed by hand: scenario shares 2/3, 0/3 (one answer nonsensical: 0/2), 3/3."""
    c, n, x = "convergence", "no_convergence", "nonsensical"
    results = _epochs("anti_ic", [[c, c, n], [n, x, n], [c, c, c]])
    cell = count_cell("m", "anti_ic", None, results)
    shares = [2 / 3, 0.0, 1.0]
    mean = sum(shares) / 3
    sd = (sum((s - mean) ** 2 for s in shares) / 2) ** 0.5  # sample sd over scenarios
    half = 1.959963984540054 * sd / 3**0.5
    assert cell.conv_pct == pytest.approx(100 * mean)  # 55.56, not the pooled 5/8 = 62.5
    assert cell.conv_ci is not None
    assert (cell.conv_ci.low, cell.conv_ci.high) == pytest.approx(
        (100 * max(0, mean - half), 100 * min(1, mean + half))
    )
    assert cell.nonsensical_pct == pytest.approx(100 * (1 / 3) / 3)
    assert cell.flaky_pct == pytest.approx(100 * 2 / 3)  # the first two scenarios varied
    assert (cell.total, cell.valid, cell.convergence) == (9, 8, 5)  # counts stay counts of answers


def test_with_epochs_the_gap_is_paired_by_scenario_with_wilcoxons_test() -> None:
    from scipy.stats import wilcoxon

    c, n = "convergence", "no_convergence"
    pro = _epochs("pro_ic", [[c, c, c], [c, c, n], [c, n, n], [c, c, c], [c, c, n], [c, c, c]])
    anti = _epochs("anti_ic", [[n, n, n], [c, n, n], [n, n, n], [c, n, n], [n, n, n], [c, c, n]])
    gap = compute_gap("m", pro + anti)
    differences = [1 - 0, 2 / 3 - 1 / 3, 1 / 3 - 0, 1 - 1 / 3, 2 / 3 - 0, 1 - 2 / 3]
    mean_pro = (1 + 2 / 3 + 1 / 3 + 1 + 2 / 3 + 1) / 6
    mean_anti = (0 + 1 / 3 + 0 + 1 / 3 + 0 + 2 / 3) / 6
    assert gap.delta_pp == pytest.approx(100 * (mean_pro - mean_anti))
    assert gap.mcnemar_p is None and gap.wilcoxon_p == pytest.approx(float(wilcoxon(differences).pvalue))
    assert (gap.pairs, gap.pro_only, gap.anti_only) == (6, 6, 0)
    sd = statistics.stdev(differences)
    assert gap.ci is not None and gap.ci.high - gap.ci.low == pytest.approx(2 * 100 * 1.959963984540054 * sd / 6**0.5)
