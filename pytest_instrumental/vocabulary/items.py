"""What an item is: its key (model x condition x scenario) and the names pytest shows it by.
Everything else (requests, backends, judges, the plan, the results) builds on these."""

from __future__ import annotations

from dataclasses import dataclass

SUITE_NAME = "instrumental"
TEST_NAME = "test_scenario"


@dataclass(frozen=True, order=True)
class ItemKey:
    model: str
    condition: str  # the name of the item's condition (conditions.py): pro_ic, act_p4, anti_ic+prefill_comply
    scenario: str

    @property
    def item_id(self) -> str:
        """The parametrization id: ``<model>-<condition>-<scenario id>``."""
        return f"{self.model}-{self.condition}-{self.scenario}"


def item_name(key: ItemKey) -> str:
    return f"{TEST_NAME}[{key.item_id}]"


def nodeid_of(key: ItemKey) -> str:
    return f"{SUITE_NAME}::{item_name(key)}"
