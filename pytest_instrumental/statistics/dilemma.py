"""The safety-security dilemma, in figures: does the developer's defence (a text in the system
prompt) still hold when an attacker pushes back, and through which channel does it break?

Per model, a matrix: rows the pushes (the plain prompt, each suffix, each activation strength,
each attack), columns the defences (none, then each); its cells are the run's own cells. From it,
paired by scenario as the steerability gap is (metrics.compute_gap):

- the **effect** of each defence: Conv%(plain prompt) - Conv%(defence alone);
- the **override** of each push under each defence: Conv%(defence and push) - Conv%(defence
  alone), what the push takes back of the defence; the worst push per defence is the largest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytest_instrumental.statistics.metrics import Gap, compute_gap
from pytest_instrumental.vocabulary.conditions import BASELINE, Condition, defended_name
from pytest_instrumental.vocabulary.verdicts import ItemResult


@dataclass(frozen=True)
class Shift:
    """One paired difference of a model: ``condition`` against ``reference`` (condition names)."""

    model: str
    defense: str
    push: str | None  # None: the defence's own effect (plain prompt against the defence alone)
    condition: str
    reference: str
    gap: Gap  # delta_pp = Conv%(condition) - Conv%(reference), with its interval and paired test


@dataclass(frozen=True)
class Dilemma:
    pushes: list[str]  # the matrix's rows, by push name (BASELINE: the plain prompt)
    defenses: list[str]  # its columns after "none"
    effects: list[Shift]  # per model and defence: Conv%(plain) - Conv%(defence alone)
    overrides: list[Shift]  # per model, defence and push: Conv%(defence and push) - Conv%(defence alone)

    def worst(self, model: str, defense: str) -> Shift | None:
        """The push that takes back most of the defence (the largest override measured)."""
        measured = [
            o for o in self.overrides if (o.model, o.defense) == (model, defense) and o.gap.delta_pp is not None
        ]
        return max(measured, key=lambda o: o.gap.delta_pp or 0.0, default=None)

    @staticmethod
    def cell_name(push: str, defense: str | None) -> str:
        """The condition of the matrix's cell (row ``push``, column ``defense``)."""
        return push if defense is None else defended_name(defense, push)


def compute_dilemma(
    items: Sequence[ItemResult], models: Sequence[str], conditions: Sequence[Condition]
) -> Dilemma | None:
    """The dilemma of a run whose conditions include defences; None without any. The effect and
    the overrides need the defence alone, so the plain prompt (``baseline``) must have run."""
    defenses = list(dict.fromkeys(c.defense.name for c in conditions if c.defense is not None))
    if not defenses:
        return None
    pushes = list(dict.fromkeys(c.push.name for c in conditions if c.defense is None))
    effects, overrides = [], []
    if BASELINE in pushes:
        for model in models:
            for defense in defenses:
                alone = Dilemma.cell_name(BASELINE, defense)
                effects.append(Shift(model, defense, None, BASELINE, alone, compute_gap(model, items, BASELINE, alone)))
                for push in pushes:
                    if push == BASELINE:
                        continue
                    attacked = Dilemma.cell_name(push, defense)
                    gap = compute_gap(model, items, attacked, alone)
                    overrides.append(Shift(model, defense, push, attacked, alone, gap))
    return Dilemma(pushes, defenses, effects, overrides)
