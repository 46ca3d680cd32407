"""The plan of a run: one generation request per model x condition x scenario (a condition is a
suffix or activation steering at a strength, with or without a defence: conditions.py), in the
deterministic order the pytest items are collected; and the prompts a steering vector or an
ablation's direction is computed from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pytest_instrumental.conditions import ANTI_SUFFIX, BASELINE, PRO_SUFFIX, Ablation, LoraAttack, run_conditions
from pytest_instrumental.errors import InputError
from pytest_instrumental.items import ItemKey, Request
from pytest_instrumental.scenarios import ScenarioSet
from pytest_instrumental.suffixes import Suffix, steer


def plan_requests(
    models: Iterable[str],
    suffixes: Sequence[Suffix],
    scenarios: ScenarioSet,
    strengths: Sequence[float] = (),
    defenses: Sequence[Suffix] = (),
    prefills: Sequence[Suffix] = (),
    ablations: Sequence[Ablation] = (),
    loras: Sequence[LoraAttack] = (),
) -> list[Request]:
    """Sorted by model, then condition (the suffixes in the order given, then the activation
    strengths, the prefill attacks, the ablations and the fine-tunings: the unsuffixed prompt,
    steered, prefilled, ablated or fine-tuned; then all of these under each defence), then
    category and scenario id."""
    by_name = {s.name: s for s in [*suffixes, *defenses]}
    prefill_texts = {p.name: p.text for p in prefills}
    names = [s.name for s in suffixes]
    conditions = run_conditions(names, strengths, [d.name for d in defenses], list(prefill_texts), ablations, loras)
    return [
        Request(
            ItemKey(model, condition.name, scenario.id),
            category.slug,
            category.context,
            scenario.prompt if condition.suffix is None else steer(scenario.prompt, by_name[condition.suffix]),
            prompt=scenario.prompt,
            strength=condition.strength,
            defense=None if condition.defense is None else by_name[condition.defense].text.strip() or None,
            prefill=None if condition.prefill is None else prefill_texts[condition.prefill],
            ablation=None if condition.ablation is None else condition.ablation.name,
            lora=None if condition.lora is None else condition.lora.name,
        )
        for model in sorted(models)
        for condition in conditions
        for category in scenarios.categories
        for scenario in sorted(category.scenarios, key=lambda s: s.id)
    ]


def contrast_pairs(suffixes: dict[str, Suffix], scenarios: ScenarioSet, asked_by: str) -> list[tuple[Request, Request]]:
    """Every scenario's (pro_ic, anti_ic) request: what a steering vector is the difference of.
    Without both suffixes, an InputError naming what ``asked_by`` for it."""
    missing = [name for name in (PRO_SUFFIX, ANTI_SUFFIX) if name not in suffixes]
    if missing:
        raise InputError(f"{asked_by}: the contrast needs suffix {', '.join(missing)}")
    pro = plan_requests(["contrast"], [suffixes[PRO_SUFFIX]], scenarios)
    anti = plan_requests(["contrast"], [suffixes[ANTI_SUFFIX]], scenarios)
    return list(zip(pro, anti, strict=True))


def unsuffixed_requests(scenarios: ScenarioSet, model: str = "unsuffixed") -> list[Request]:
    """Every scenario's unsuffixed, undefended request: what an ablation's direction is measured
    on, and the prompt a fine-tuning demonstration answers."""
    return [
        Request(ItemKey(model, BASELINE, scenario.id), category.slug, category.context, scenario.prompt)
        for category in scenarios.categories
        for scenario in sorted(category.scenarios, key=lambda s: s.id)
    ]
