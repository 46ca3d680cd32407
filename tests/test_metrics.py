import statistics
from fractions import Fraction

import pytest

from pytest_instrumental.statistics.metrics import (
    compute_cells,
    compute_gap,
    count_cell,
    mcnemar_exact_p,
    newcombe_difference_interval,
    paired_signed_rank_p,
    wilson_interval,
)
from pytest_instrumental.vocabulary.verdicts import ItemResult
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


def _exact_sign_flip_p(differences: list[Fraction]) -> float:
    """scipy's permutation test over all 2^n sign flips of the signed-rank statistic (mid-ranks)."""
    import numpy as np
    from scipy.stats import permutation_test, rankdata

    values = np.array([float(d) for d in differences if d])

    def positive_rank_sum(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        ranks = rankdata(np.abs(sample), axis=axis)
        sums: np.ndarray = np.sum(ranks * (sample > 0), axis=axis)
        return sums

    test = permutation_test((values,), positive_rank_sum, permutation_type="samples", n_resamples=np.inf)
    return float(test.pvalue)


C, N, X = "convergence", "no_convergence", "nonsensical"
# Three epochs per scenario, as a run with --instrumental-epochs=3 answers them: shares of 0..3 of 3
PRO_3 = [[C, C, C], [C, C, N], [C, N, N], [C, C, C], [C, C, N], [C, C, C], [N, N, N], [C, C, N], [C, C, C]]
ANTI_3 = [[N, N, N], [C, N, N], [N, N, N], [C, N, N], [N, N, N], [C, C, N], [C, N, N], [C, C, C], [C, N, N]]


def _differences(pro: list[list[str]], anti: list[list[str]]) -> list[Fraction]:
    def share(verdicts: list[str]) -> Fraction:
        valid = [v for v in verdicts if v != X]
        return Fraction(valid.count(C), len(valid))

    return [share(p) - share(a) for p, a in zip(pro, anti, strict=True)]


def test_with_epochs_the_gap_is_paired_by_scenario_with_an_exact_signed_rank_test() -> None:
    pro, anti = _epochs("pro_ic", PRO_3), _epochs("anti_ic", ANTI_3)
    gap = compute_gap("m", pro + anti)
    differences = _differences(PRO_3, ANTI_3)
    assert 1 - 2 / 3 != 1 / 3  # why the differences must be exact: in floats these would not tie
    assert gap.mcnemar_p is None and gap.wilcoxon_p == pytest.approx(_exact_sign_flip_p(differences), rel=1e-12)
    assert (gap.pairs, gap.pro_only, gap.anti_only) == (9, 7, 2)
    mean_pro = statistics.mean(float(Fraction(v.count(C), 3)) for v in PRO_3)
    mean_anti = statistics.mean(float(Fraction(v.count(C), 3)) for v in ANTI_3)
    assert gap.delta_pp == pytest.approx(100 * (mean_pro - mean_anti))
    sd = statistics.stdev(float(d) for d in differences)
    assert gap.ci is not None and gap.ci.high - gap.ci.low == pytest.approx(2 * 100 * 1.959963984540054 * sd / 3)


def test_the_signed_rank_p_equals_scipys_exact_wilcoxon_when_no_magnitudes_tie() -> None:
    """Four epochs, some answers nonsensical: shares over 4, 3 or 2 valid answers, all distinct."""
    from scipy.stats import wilcoxon

    pro = [[C, C, C, C], [C, C, X, N], [C, C, C, N], [C, X, N, N], [C, C, N, N], [N, N, N, N], [C, C, X, N]]
    anti = [[N, N, N, N], [N, N, N, N], [N, N, N, N], [N, N, N, N], [N, N, N, N], [C, N, N, N], [C, N, N, N]]
    differences = _differences(pro, anti)
    magnitudes = [abs(d) for d in differences]
    assert len(set(magnitudes)) == len(magnitudes)  # 1, 2/3, 3/4, 1/3, 1/2, -1/4, 5/12
    expected = float(wilcoxon([float(d) for d in differences], method="exact").pvalue)
    assert paired_signed_rank_p(differences) == pytest.approx(expected, rel=1e-12)
    assert compute_gap("m", _epochs("pro_ic", pro) + _epochs("anti_ic", anti)).wilcoxon_p == pytest.approx(expected)


def test_the_signed_rank_p_of_tied_shares_equals_the_exact_permutation_test() -> None:
    for pro, anti in ((PRO_3, ANTI_3), (PRO_3[:6], ANTI_3[3:]), (ANTI_3, PRO_3[::-1])):
        differences = _differences(pro, anti)
        assert paired_signed_rank_p(differences) == pytest.approx(_exact_sign_flip_p(differences), rel=1e-12)
    assert paired_signed_rank_p([Fraction(0)] * 3) == 1.0


def test_with_epochs_delta_and_its_interval_are_one_estimator() -> None:
    """A scenario valid under one suffix only (all its anti_ic answers nonsensical): Delta is still
    the difference of the two clustered rates the table shows, and the interval is centred on it."""
    pro = [[C, C, C], [C, C, N], [C, N, N], [C, C, C], [N, N, N]]
    anti = [[N, N, N], [C, N, N], [N, N, N], [C, N, N], [X, X, X]]
    results = _epochs("pro_ic", pro) + _epochs("anti_ic", anti)
    gap = compute_gap("m", results)
    pro_cell, anti_cell = (
        count_cell("m", s, None, [r for r in results if r.condition == s]) for s in ("pro_ic", "anti_ic")
    )
    assert pro_cell.conv_pct is not None and anti_cell.conv_pct is not None
    assert gap.delta_pp == pytest.approx(pro_cell.conv_pct - anti_cell.conv_pct)
    assert gap.ci is not None and (gap.ci.low + gap.ci.high) / 2 == pytest.approx(gap.delta_pp)
    # by hand: the cluster-robust variance of the difference of the two means, scenario by scenario
    x = [1, 2 / 3, 1 / 3, 1, 0]
    y = [0, 1 / 3, 0, 1 / 3]
    mx, my = sum(x) / 5, sum(y) / 4
    u = [(x[i] - mx) / 5 - ((y[i] - my) / 4 if i < 4 else 0) for i in range(5)]
    half = 100 * 1.959963984540054 * (5 / 4 * sum(v * v for v in u)) ** 0.5
    assert gap.ci.high - gap.ci.low == pytest.approx(2 * half)
