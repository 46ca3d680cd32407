"""The plan of a run: one generation request per model x suffix x scenario, in the deterministic
order the pytest items are collected, and the names those items carry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pytest_instrumental.backends.protocol import Request
from pytest_instrumental.scenarios import ScenarioSet
from pytest_instrumental.suffixes import Suffix, steer
from pytest_instrumental.verdicts import ItemKey

SUITE_NAME = "instrumental"
TEST_NAME = "test_scenario"


def plan_requests(models: Iterable[str], suffixes: Sequence[Suffix], scenarios: ScenarioSet) -> list[Request]:
    """Sorted by model, then suffix (in the order given), then category and scenario id."""
    return [
        Request(
            ItemKey(model, suffix.name, scenario.id), category.slug, category.context, steer(scenario.prompt, suffix)
        )
        for model in sorted(models)
        for suffix in suffixes
        for category in scenarios.categories
        for scenario in sorted(category.scenarios, key=lambda s: s.id)
    ]


def item_name(key: ItemKey) -> str:
    return f"{TEST_NAME}[{key.item_id}]"


def nodeid_of(key: ItemKey) -> str:
    return f"{SUITE_NAME}::{item_name(key)}"
