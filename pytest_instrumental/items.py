"""What an item is: its key (model x condition x scenario), the request it generates from, and the
names pytest shows it by. Everything else (backends, judges, the plan, the results) builds on these."""

from __future__ import annotations

from dataclasses import dataclass

SUITE_NAME = "instrumental"
TEST_NAME = "test_scenario"


@dataclass(frozen=True, order=True)
class ItemKey:
    model: str
    suffix: str  # the item's condition (conditions.py): a suffix's name, or an activation strength's
    scenario: str

    @property
    def item_id(self) -> str:
        """The parametrization id: ``<model>-<suffix>-<scenario id>``."""
        return f"{self.model}-{self.suffix}-{self.scenario}"


@dataclass(frozen=True)
class Demonstration:
    """One fine-tuning example: a chat's ``(role, content)`` turns, the last the answer trained on."""

    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Request:
    """One generation: the category context (system message) and the steered prompt (user message)."""

    key: ItemKey
    category: str
    context: str
    steered_prompt: str
    # the scenario's prompt before its suffix, which every condition of the scenario starts with
    # (backends/transformers.py prefills it once for them all); None: the steered prompt
    prompt: str | None = None
    epoch: int = 1  # which of the item's answers (--instrumental-epochs), from 1
    strength: float | None = None  # activation steering at this strength (backends/steering.py); None: none
    defense: str | None = None  # a defence's text, appended to the system prompt; None: undefended
    prefill: str | None = None  # an attacker's start of the answer, which the model continues; None: none
    # the defence's direction projected out (backends/ablation.py), by its condition's name (ablate,
    # ablate_l6: conditions.parse_ablation); None: none
    ablation: str | None = None
    # fine-tuning, by its condition's name (lora16: conditions.parse_lora), and what it trains on
    # (training_data.py; filled in before it generates); None: none
    lora: str | None = None
    training: tuple[Demonstration, ...] = ()

    @property
    def system(self) -> str:
        """The system prompt the model sees: the category context, then the defence's text."""
        return "\n\n".join(part for part in (self.context.strip(), self.defense or "") if part)


def item_name(key: ItemKey) -> str:
    return f"{TEST_NAME}[{key.item_id}]"


def nodeid_of(key: ItemKey) -> str:
    return f"{SUITE_NAME}::{item_name(key)}"
