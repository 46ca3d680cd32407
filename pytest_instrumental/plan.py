"""The plan of a run: one generation request per model x condition x scenario (conditions.py),
in the deterministic order the pytest items are collected; and the prompts a steering vector or an
ablation's direction is computed from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pytest_instrumental.errors import InputError
from pytest_instrumental.vocabulary.conditions import ANTI_SUFFIX, BASELINE, PRO_SUFFIX, Condition, Suffix, SuffixPush
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import ScenarioSet


def plan_requests(models: Iterable[str], conditions: Sequence[Condition], scenarios: ScenarioSet) -> list[Request]:
    """Sorted by model, then condition (in the order given: conditions.run_conditions), then
    category and scenario id."""
    return [
        Request(
            ItemKey(model, condition.name, scenario.id), category.slug, category.context, scenario.prompt, condition
        )
        for model in sorted(models)
        for condition in conditions
        for category in scenarios.categories
        for scenario in sorted(category.scenarios, key=lambda s: s.id)
    ]


def contrast_pairs(
    suffixes: Mapping[str, Suffix], scenarios: ScenarioSet, asked_by: str
) -> list[tuple[Request, Request]]:
    """Every scenario's (pro_ic, anti_ic) request: what a steering vector is the difference of.
    Without both suffixes, an InputError naming what ``asked_by`` for it."""
    missing = [name for name in (PRO_SUFFIX, ANTI_SUFFIX) if name not in suffixes]
    if missing:
        raise InputError(f"{asked_by}: the contrast needs suffix {', '.join(missing)}")
    pro = plan_requests(["contrast"], [Condition(SuffixPush(suffixes[PRO_SUFFIX]))], scenarios)
    anti = plan_requests(["contrast"], [Condition(SuffixPush(suffixes[ANTI_SUFFIX]))], scenarios)
    return list(zip(pro, anti, strict=True))


def unsuffixed_requests(scenarios: ScenarioSet, model: str = "unsuffixed") -> list[Request]:
    """Every scenario's unsuffixed, undefended request: what an ablation's direction is measured
    on, and the prompt a fine-tuning demonstration answers."""
    return [
        Request(ItemKey(model, BASELINE, scenario.id), category.slug, category.context, scenario.prompt)
        for category in scenarios.categories
        for scenario in sorted(category.scenarios, key=lambda s: s.id)
    ]
