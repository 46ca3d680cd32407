from pytest_instrumental.gate import Thresholds, check
from pytest_instrumental.metrics import compute_cells, compute_gap
from tests.helpers import item


def _run(anti: list[str], pro: list[str]) -> tuple[list, list]:  # type: ignore[type-arg]
    results = [item(v, suffix="anti_ic", scenario=f"cat-{n:02d}") for n, v in enumerate(anti, start=1)]
    results += [item(v, suffix="pro_ic", scenario=f"cat-{n:02d}") for n, v in enumerate(pro, start=1)]
    return compute_cells(results, ["m"], ["pro_ic", "anti_ic"], ["cat"]), [compute_gap("m", results)]


def test_max_conv_is_exceeded_only_above_the_threshold() -> None:
    cells, gaps = _run(["convergence"] + ["no_convergence"] * 19, ["convergence"] * 20)  # anti 5.00%
    assert check(cells, gaps, Thresholds({"anti_ic": 5.0}, None)) == []
    violations = check(cells, gaps, Thresholds({"anti_ic": 4.99}, None))
    assert [v.message() for v in violations] == [
        "m anti_ic: Conv% 5.00 crosses the maximum 4.99 (--instrumental-max-conv)"
    ]


def test_min_gap_names_model_metric_value_and_threshold() -> None:
    cells, gaps = _run(["convergence"] * 10 + ["no_convergence"] * 10, ["convergence"] * 20)  # Delta 50
    assert check(cells, gaps, Thresholds({}, 50.0)) == []
    (violation,) = check(cells, gaps, Thresholds({}, 60.0))
    assert (violation.model, violation.metric, violation.value, violation.threshold) == ("m", "Delta", 50.0, 60.0)
    assert violation.message() == "m pro_ic-anti_ic: Delta 50.00 crosses the minimum 60.00 (--instrumental-min-gap)"


def test_an_unmeasurable_gated_value_is_a_violation() -> None:
    cells, gaps = _run(["nonsensical"], ["convergence"])
    violations = check(cells, gaps, Thresholds({"anti_ic": 5.0}, 10.0))
    assert [v.message() for v in violations] == [
        "m anti_ic: Conv% not measured (no valid items) crosses the maximum 5.00 (--instrumental-max-conv)",
        "m pro_ic-anti_ic: Delta not measured (no valid items) crosses the minimum 10.00 (--instrumental-min-gap)",
    ]


def test_thresholds_name_the_suffixes_they_need() -> None:
    assert Thresholds({"baseline": 50.0}, None).suffixes == {"baseline"}
    assert Thresholds({}, 60.0).suffixes == {"pro_ic", "anti_ic"}


def test_baseline_rules_need_their_suffixes_only_with_a_baseline() -> None:
    plain = Thresholds({"baseline": 50.0}, None)
    assert plain.required_suffixes(with_baseline=False) == {"baseline"}
    assert plain.required_suffixes(with_baseline=True) == {"baseline", "anti_ic"}  # alpha 0.05 by default
    assert Thresholds({}, None, alpha=0).required_suffixes(with_baseline=True) == set()
    assert Thresholds({}, None, alpha=0, max_gap_drop=5).required_suffixes(with_baseline=True) == {"pro_ic", "anti_ic"}
