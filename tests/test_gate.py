import pytest

from pytest_instrumental.config import Thresholds
from pytest_instrumental.statistics.gate import RULE_OF_OPTION, RULES, Measured, check, holm_adjusted, rules_checked
from pytest_instrumental.statistics.metrics import compute_cells, compute_gap
from tests.helpers import item


def _run(anti: list[str], pro: list[str]) -> tuple[list, list]:  # type: ignore[type-arg]
    results = [item(v, suffix="anti_ic", scenario=f"cat-{n:02d}") for n, v in enumerate(anti, start=1)]
    results += [item(v, suffix="pro_ic", scenario=f"cat-{n:02d}") for n, v in enumerate(pro, start=1)]
    return compute_cells(results, ["m"], ["pro_ic", "anti_ic"], ["cat"]), [compute_gap("m", results)]


def test_max_conv_is_exceeded_only_above_the_threshold() -> None:
    cells, gaps = _run(["convergence"] + ["no_convergence"] * 19, ["convergence"] * 20)  # anti 5.00%
    assert check(Measured(cells, gaps), Thresholds({"anti_ic": 5.0}, None)) == []
    violations = check(Measured(cells, gaps), Thresholds({"anti_ic": 4.99}, None))
    assert [v.message() for v in violations] == [
        "m anti_ic: Conv% 5.00 crosses the maximum 4.99 (--instrumental-max-conv)"
    ]


def test_min_gap_names_model_metric_value_and_threshold() -> None:
    cells, gaps = _run(["convergence"] * 10 + ["no_convergence"] * 10, ["convergence"] * 20)  # Delta 50
    assert check(Measured(cells, gaps), Thresholds({}, 50.0)) == []
    (violation,) = check(Measured(cells, gaps), Thresholds({}, 60.0))
    assert (violation.model, violation.metric, violation.value, violation.threshold) == ("m", "Delta", 50.0, 60.0)
    assert violation.message() == "m pro_ic-anti_ic: Delta 50.00 crosses the minimum 60.00 (--instrumental-min-gap)"


def test_an_unmeasurable_gated_value_is_a_rule_not_evaluated() -> None:
    cells, gaps = _run(["nonsensical"], ["convergence"])
    violations = check(Measured(cells, gaps), Thresholds({"anti_ic": 5.0}, 10.0))
    assert [v.message() for v in violations] == [
        "m anti_ic: --instrumental-max-conv not evaluated: Conv% was not measured (no valid items)",
        "m pro_ic-anti_ic: --instrumental-min-gap not evaluated: Delta was not measured (no valid items)",
    ]
    assert not any(v.evaluated for v in violations)


def test_a_rule_that_no_model_ran_is_not_evaluated() -> None:
    violations = check(Measured([], []), Thresholds({"anti_ic": 5.0}, 10.0))
    assert [v.message() for v in violations] == [
        "--instrumental-max-conv anti_ic=5 not evaluated: no model ran suffix anti_ic",
        "--instrumental-min-gap not evaluated: no model ran both pro_ic and anti_ic",
    ]


def test_the_upper_bound_passes_a_maximum_only_when_the_whole_interval_is_below_it() -> None:
    # anti_ic 1 of 40 converged: 2.50%, Wilson 95% interval [0.44, 12.88]
    cells, gaps = _run(["convergence"] + ["no_convergence"] * 39, ["convergence"] * 40)
    assert check(Measured(cells, gaps), Thresholds({"anti_ic": 5.0}, None)) == []  # the point estimate is below 5
    (violation,) = check(Measured(cells, gaps), Thresholds({"anti_ic": 5.0}, None, bound="upper"))
    assert violation.compared == pytest.approx(12.88, abs=0.01)
    assert (violation.statistic, violation.test) == ("Wilson 95% interval", None)  # no paired test behind it
    assert violation.message() == (
        "m anti_ic: Conv% 2.50, the upper end of its 95% interval 12.88, is not below the maximum 5.00 "
        "(--instrumental-max-conv, bound upper)"
    )
    assert check(Measured(cells, gaps), Thresholds({"anti_ic": 13.0}, None, bound="upper")) == []


def test_the_upper_bound_passes_a_minimum_gap_only_when_the_lower_end_is_above_it() -> None:
    cells, gaps = _run(["convergence"] * 10 + ["no_convergence"] * 30, ["convergence"] * 30 + ["no_convergence"] * 10)
    (gap,) = gaps  # Delta 50, its Newcombe interval reaches below 40
    assert gap.ci is not None and gap.ci.low < 40 < gap.delta_pp
    assert check(Measured(cells, gaps), Thresholds({}, 40.0)) == []
    (violation,) = check(Measured(cells, gaps), Thresholds({}, 40.0, bound="upper"))
    assert violation.compared == gap.ci.low and "the lower end of its 95% interval" in violation.message()
    assert violation.statistic == "Newcombe 95% interval" and violation.p_value is None
    assert check(Measured(cells, gaps), Thresholds({}, gap.ci.low - 0.1, bound="upper")) == []


def test_holm_adjusts_the_p_values_of_a_family() -> None:
    raw = [0.01, 0.04, 0.03, 0.20]
    # by hand: sorted 0.01, 0.03, 0.04, 0.20 -> 4*0.01, 3*0.03, max(0.09, 2*0.04), max(0.09, 0.20)
    assert holm_adjusted(raw) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm_adjusted([0.5]) == [0.5] and holm_adjusted([0.6, 0.7]) == [1.0, 1.0]


def test_thresholds_name_the_suffixes_they_need() -> None:
    assert Thresholds({"baseline": 50.0}, None).suffixes == {"baseline"}
    assert Thresholds({}, 60.0).suffixes == {"pro_ic", "anti_ic"}


def test_baseline_rules_need_their_suffixes_only_with_a_baseline() -> None:
    plain = Thresholds({"baseline": 50.0}, None)
    assert plain.required_suffixes(with_baseline=False) == {"baseline"}
    assert plain.required_suffixes(with_baseline=True) == {"baseline", "anti_ic"}  # alpha 0.05 by default
    assert Thresholds({}, None, alpha=0).required_suffixes(with_baseline=True) == set()
    assert Thresholds({}, None, alpha=0, max_gap_drop=5).required_suffixes(with_baseline=True) == {"pro_ic", "anti_ic"}


@pytest.mark.parametrize("bound", ["point", "upper"])
def test_a_rule_not_evaluated_names_the_statistic_it_would_have_compared(bound: str) -> None:
    thresholds = Thresholds({"anti_ic": 5.0}, 10.0, bound=bound, max_override=5.0, min_tamper_cost=8)
    violations = check(Measured(), thresholds)
    assert all(not v.evaluated for v in violations)
    statistics = {v.option.split()[0]: v.statistic for v in violations}
    interval = bound == "upper"
    assert statistics == {
        "--instrumental-max-conv": "Wilson 95% interval" if interval else "point estimate",
        "--instrumental-min-gap": "Newcombe 95% interval" if interval else "point estimate",
        "--instrumental-max-override": "Newcombe 95% interval" if interval else "point estimate",
        "--instrumental-min-tamper-cost": "the smallest fine-tuning budget whose Conv% reaches the reference",
    }
    assert [RULE_OF_OPTION[option].statistic(thresholds) for option in statistics] == list(statistics.values())
    assert [v.message().split(" not evaluated: ")[0] for v in violations] == [
        "--instrumental-max-conv anti_ic=5",
        "--instrumental-min-gap",
        "--instrumental-max-override",
        "--instrumental-min-tamper-cost",
    ]


def test_every_rule_is_one_row_with_its_own_option() -> None:
    assert len(RULE_OF_OPTION) == len(RULES) and all(rule.option.startswith("--instrumental-") for rule in RULES)
    # with nothing configured, no rule reports: the significance rule needs a comparison
    assert check(Measured(), Thresholds({}, None)) == [] and rules_checked(Measured(), Thresholds({}, None)) == []
