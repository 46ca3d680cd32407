"""The plan of a run: one generation request per model x condition x scenario (a condition is a
suffix, or activation steering at a strength), in the deterministic
order the pytest items are collected, and the names those items carry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pytest_instrumental.backends.protocol import Request
from pytest_instrumental.backends.steering import condition_name
from pytest_instrumental.scenarios import ScenarioSet
from pytest_instrumental.suffixes import Suffix, steer
from pytest_instrumental.verdicts import ItemKey

SUITE_NAME = "instrumental"
TEST_NAME = "test_scenario"


def plan_requests(
    models: Iterable[str], suffixes: Sequence[Suffix], scenarios: ScenarioSet, strengths: Sequence[float] = ()
) -> list[Request]:
    """Sorted by model, then condition (the suffixes in the order given, then the activation
    strengths: the unsuffixed prompt, steered), then category and scenario id."""
    conditions: list[tuple[str, Suffix | None, float | None]] = [(s.name, s, None) for s in suffixes]
    conditions += [(condition_name(strength), None, strength) for strength in strengths]
    return [
        Request(
            ItemKey(model, name, scenario.id),
            category.slug,
            category.context,
            scenario.prompt if suffix is None else steer(scenario.prompt, suffix),
            strength=strength,
        )
        for model in sorted(models)
        for name, suffix, strength in conditions
        for category in scenarios.categories
        for scenario in sorted(category.scenarios, key=lambda s: s.id)
    ]


def item_name(key: ItemKey) -> str:
    return f"{TEST_NAME}[{key.item_id}]"


def nodeid_of(key: ItemKey) -> str:
    return f"{SUITE_NAME}::{item_name(key)}"
