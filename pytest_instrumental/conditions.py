"""What an item is run under, its condition: a push, either a steering suffix appended to the
user turn (``baseline``, ``pro_ic``, ``anti_ic``, or a user's), activation steering at a
strength (``act_p4``) or an attack (``prefill_comply``: the answer starts with an attacker's
text; ``ablate``, ``ablate_l6``: the direction through which the defence acts is projected out of
the residual stream at every layer, or at layer 6; ``lora16``: the weights fine-tuned for 16
steps); and optionally a defence, a suffix's text
appended to the system prompt, the channel a deployment controls (``anti_ic+pro_ic``: the
anti_ic defence against the pro_ic push). The names are item id parts; the gap is the
difference between a pair of conditions.

Suffixes themselves are files (suffixes.py); the mechanisms live in backends/steering.py and
backends/ablation.py and backends/lora.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

BASELINE = "baseline"
PRO_SUFFIX = "pro_ic"
ANTI_SUFFIX = "anti_ic"
DEFAULT_SUFFIXES = (BASELINE, PRO_SUFFIX, ANTI_SUFFIX)  # the paper's three conditions
GAP_NAME = f"{PRO_SUFFIX}-{ANTI_SUFFIX}"  # the steerability gap: Conv% under pro_ic minus under anti_ic

ACTIVATION_PREFIX = "act_"
_ACTIVATION = re.compile(r"act_(?P<sign>[pm])(?P<whole>\d+)(?:_(?P<fraction>\d+))?\Z")
PREFILL = "prefill"  # --instrumental-attack prefill:NAME; its condition is prefill_NAME
ABLATE = "ablate"  # --instrumental-attack ablate[:LAYER]; its condition is ablate or ablate_lLAYER
_ABLATION = re.compile(r"ablate(?:_l(?P<layer>\d+))?\Z")
LORA = "lora"  # --instrumental-attack lora:STEPS[:r=RANK][:lr=RATE]; its condition is loraSTEPS[_rRANK][_lrRATE]
_LORA = re.compile(r"lora(?P<steps>\d+)(?:_r(?P<rank>\d+))?(?:_lr(?P<lr>[0-9a-z_]+))?\Z")
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_LR = 2e-4  # the usual LoRA rate (QLoRA's); with rank 8 it moves a model within tens of steps


def activation_name(strength: float) -> str:
    """``4`` -> ``act_p4``, ``-0.5`` -> ``act_m0_5``: an item id part (no ``-``, no ``.``)."""
    sign = "m" if strength < 0 else "p"
    text = f"{abs(strength):g}".replace(".", "_")
    return f"{ACTIVATION_PREFIX}{sign}{text}"


def activation_strength(name: str) -> float | None:
    """The strength of an activation condition's name; None for a suffix."""
    match = _ACTIVATION.match(name)
    if match is None:
        return None
    value = float(f"{match['whole']}.{match['fraction'] or 0}")
    return -value if match["sign"] == "m" else value


@dataclass(frozen=True)
class Ablation:
    """Directional ablation at ``layer`` (None: at every layer)."""

    layer: int | None = None

    @property
    def name(self) -> str:
        """``ablate`` or ``ablate_l6``: an item id part."""
        return ABLATE if self.layer is None else f"{ABLATE}_l{self.layer}"

    @property
    def attack(self) -> str:
        """As ``--instrumental-attack`` names it: ``ablate`` or ``ablate:6``."""
        return ABLATE if self.layer is None else f"{ABLATE}:{self.layer}"


def parse_ablation(name: str) -> Ablation | None:
    """The ablation an item id part stands for; None for anything else."""
    match = _ABLATION.match(name)
    if match is None:
        return None
    return Ablation(None if match["layer"] is None else int(match["layer"]))


def attack_ablation(text: str) -> Ablation | None:
    """The ablation ``--instrumental-attack`` names (``ablate``, ``ablate:6``); None for another attack."""
    kind, colon, layer = text.partition(":")
    if kind != ABLATE:
        return None
    if not colon:
        return Ablation()
    if not layer.isascii() or not layer.isdigit():
        raise ValueError(f"{text!r}: the layer to ablate at is a whole number, from 0")
    return Ablation(int(layer))


@dataclass(frozen=True)
class LoraAttack:
    """Fine-tuning with LoRA for ``steps`` optimizer steps, at ``rank`` and learning rate ``lr``."""

    steps: int
    rank: int = DEFAULT_LORA_RANK
    lr: float = DEFAULT_LORA_LR

    @property
    def name(self) -> str:
        """``lora16``; ``lora16_r4_lr0_001`` with a rank and rate of its own: an item id part."""
        rank = "" if self.rank == DEFAULT_LORA_RANK else f"_r{self.rank}"
        lr = "" if self.lr == DEFAULT_LORA_LR else "_lr" + f"{self.lr:g}".replace(".", "_").replace("-", "m")
        return f"{LORA}{self.steps}{rank}{lr}"

    @property
    def attack(self) -> str:
        """As ``--instrumental-attack`` names it: ``lora:16``, ``lora:16:r=4:lr=0.001``."""
        rank = "" if self.rank == DEFAULT_LORA_RANK else f":r={self.rank}"
        lr = "" if self.lr == DEFAULT_LORA_LR else f":lr={self.lr:g}"
        return f"{LORA}:{self.steps}{rank}{lr}"

    @property
    def training(self) -> tuple[int, float]:
        """What an adapter's training shares with the other budgets' (all but its length)."""
        return self.rank, self.lr


def attack_lora(text: str) -> LoraAttack | None:
    """The fine-tuning ``--instrumental-attack`` names (``lora:16``, ``lora:16:r=4:lr=1e-3``); None
    for another attack; a ValueError saying what is wrong with a malformed one."""
    kind, _, rest = text.partition(":")
    if kind != LORA:
        return None
    steps, *settings = rest.split(":")
    if not steps.isascii() or not steps.isdigit():
        raise ValueError(f"{text!r}: lora:STEPS takes a whole number of optimizer steps, from 0")
    values: dict[str, str] = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if key not in ("r", "lr") or not equals or key in values:
            raise ValueError(f"{text!r}: after lora:STEPS come r=RANK and lr=RATE, each at most once")
        values[key] = value
    rank = values.get("r", str(DEFAULT_LORA_RANK))
    if not rank.isascii() or not rank.isdigit() or int(rank) < 1:
        raise ValueError(f"{text!r}: the rank r is a whole number from 1")
    try:
        lr = float(values.get("lr", DEFAULT_LORA_LR))
    except ValueError:
        raise ValueError(f"{text!r}: the learning rate lr is a number") from None
    if not (0 < lr < 1) or float(f"{lr:g}") != lr:
        raise ValueError(f"{text!r}: the learning rate lr is between 0 and 1, with at most 6 significant digits")
    return LoraAttack(int(steps), int(rank), lr)


def parse_lora(name: str) -> LoraAttack | None:
    """The fine-tuning an item id part (``lora16_r4_lr0_001``) stands for; None for anything else."""
    match = _LORA.match(name)
    if match is None:
        return None
    try:
        lr = DEFAULT_LORA_LR if match["lr"] is None else float(match["lr"].replace("_", ".").replace("m", "-"))
    except ValueError:
        return None
    return LoraAttack(int(match["steps"]), DEFAULT_LORA_RANK if match["rank"] is None else int(match["rank"]), lr)


# Between a defence and the push it faces; "+" because pytest's -k grammar takes it in a name
# (">" it does not), and "-" joins an item id's parts.
DEFENSE_SEPARATOR = "+"


def defended_name(defense: str, push: str) -> str:
    """The name of ``push`` under ``defense``: ``anti_ic+pro_ic``."""
    return f"{defense}{DEFENSE_SEPARATOR}{push}"


@dataclass(frozen=True)
class Condition:
    """One condition: its push (``suffix``; ``strength`` for activation steering; ``prefill``, the
    name of the attacker's start of the answer; ``ablation``) and the ``defense`` it runs under
    (a suffix's name; None: undefended)."""

    suffix: str | None = None
    strength: float | None = None
    defense: str | None = None
    prefill: str | None = None
    ablation: Ablation | None = None
    lora: LoraAttack | None = None

    @property
    def push(self) -> str:
        if self.strength is not None:
            return activation_name(self.strength)
        if self.ablation is not None:
            return self.ablation.name
        if self.lora is not None:
            return self.lora.name
        return f"{PREFILL}_{self.prefill}" if self.prefill is not None else str(self.suffix)

    @property
    def attack(self) -> str | None:
        """The attack, as ``--instrumental-attack`` names it; None for a suffix or a strength."""
        if self.ablation is not None:
            return self.ablation.attack
        if self.lora is not None:
            return self.lora.attack
        return None if self.prefill is None else f"{PREFILL}:{self.prefill}"

    @property
    def name(self) -> str:
        return self.push if self.defense is None else defended_name(self.defense, self.push)

    def parts(self) -> dict[str, object]:
        """What the results JSON records of an item's condition, besides its name."""
        return {"defense": self.defense, "suffix": self.suffix, "attack": self.attack, "strength": self.strength}


def run_conditions(
    suffixes: Sequence[str],
    strengths: Sequence[float] = (),
    defenses: Sequence[str] = (),
    prefills: Sequence[str] = (),
    ablations: Sequence[Ablation] = (),
    loras: Sequence[LoraAttack] = (),
) -> list[Condition]:
    """A run's conditions in item order: each suffix, each activation strength, each prefill
    attack, each ablation, each fine-tuning, undefended; then the same under each defence."""
    pushes = [Condition(suffix=s) for s in suffixes] + [Condition(strength=s) for s in strengths]
    pushes += [Condition(prefill=p) for p in prefills] + [Condition(ablation=a) for a in ablations]
    pushes += [Condition(lora=lora) for lora in loras]
    return pushes + [replace(p, defense=defense) for defense in defenses for p in pushes]


def parse_condition(name: str, suffixes: Sequence[str], prefills: Sequence[str] = ()) -> Condition | None:
    """The condition ``name`` stands for, given the suffixes and prefills there are; None when it
    is none."""
    defense, separator, push = name.rpartition(DEFENSE_SEPARATOR)
    if separator and defense not in suffixes:
        return None
    strength = activation_strength(push)
    if strength is not None:
        return Condition(strength=strength, defense=defense or None)
    ablation = parse_ablation(push)
    if ablation is not None:
        return Condition(defense=defense or None, ablation=ablation)
    lora = parse_lora(push)
    if lora is not None:
        return Condition(defense=defense or None, lora=lora)
    prefill = push.removeprefix(f"{PREFILL}_")
    if push.startswith(f"{PREFILL}_") and prefill in prefills:
        return Condition(defense=defense or None, prefill=prefill)
    return Condition(suffix=push, defense=defense or None) if push in suffixes else None


def activation_pair(strengths: Sequence[float]) -> tuple[str, str] | None:
    """The activation gap's two conditions: the strongest positive and the strongest negative push."""
    positive, negative = [s for s in strengths if s > 0], [s for s in strengths if s < 0]
    if not positive or not negative:
        return None
    return activation_name(max(positive)), activation_name(min(negative))


def has_gap(conditions: Sequence[str]) -> bool:
    """Whether the suffix gap can be measured: both of its conditions ran."""
    return PRO_SUFFIX in conditions and ANTI_SUFFIX in conditions
