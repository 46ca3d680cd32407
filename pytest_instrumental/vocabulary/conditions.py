"""What an item is run under, its condition: a push and optionally a defence.

A push is one of a few kinds behind one protocol (``Push``): a steering suffix appended to the
user turn (``baseline``, ``pro_ic``, ``anti_ic``, or a user's), activation steering at a strength
(``act_p4``), or an attack: ``prefill_comply`` (the answer starts with an attacker's text),
``ablate``, ``ablate_l6`` (the direction through which the defence acts is projected out of the
residual stream at every layer, or at layer 6), ``lora16`` (the weights fine-tuned for 16 steps).
A defence is a suffix's text appended to the system prompt, the channel a deployment controls
(``anti_ic+pro_ic``: the anti_ic defence against the pro_ic push). Names are item id parts; the
gap is the difference between a pair of conditions.

Conditions are typed from the option parser to the backend: a name is parsed back into a
condition only where a results file is read (``parse_condition``). What is sent for a condition
is built once (request.py: ``chat_turns``); what changes the weights is applied in backends/
(steering.py, ablation.py, lora.py, behind backends/interventions.py's protocol).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Protocol

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
# --instrumental-attack lora:STEPS[:r=RANK][:lr=RATE][:s=SEED]; its condition is loraSTEPS[_rRANK][_lrRATE][_sSEED]
LORA = "lora"
_LORA = re.compile(r"lora(?P<steps>\d+)(?:_r(?P<rank>\d+))?(?:_lr(?P<lr>[0-9em_]+?))?(?:_s(?P<seed>\d+))?\Z")
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_LR = 2e-4  # the usual LoRA rate (QLoRA's); with rank 8 it moves a model within tens of steps
MAX_LORA_STEPS = 100_000  # a fine-tuning budget past it is a typo (days of training)
MAX_LORA_RANK = 1024
MAX_ATTACK_SEEDS = 100  # --instrumental-attack-seeds: each seed is a training run per budget and category


@dataclass(frozen=True)
class Suffix:
    """A named text: a steering suffix, a defence's text, or a prefill (suffixes.py loads them)."""

    name: str
    text: str
    path: Path | None = None  # the file it was read from; None: made here (the plain prompt's empty suffix)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def steer(prompt: str, suffix: Suffix) -> str:
    """The steered prompt of PROTOCOL.md; an empty suffix leaves the prompt unchanged."""
    if not suffix.text.strip():
        return prompt
    return prompt.rstrip() + "\n\n" + suffix.text.strip() + "\n"


@dataclass(frozen=True)
class Server:
    """Where a model runs when it is not in this process: ``engine``, the engine this session
    starts (None: a server elsewhere, any OpenAI-compatible API), whether its API continues an
    assistant turn (vLLM and SGLang do), and whether the session can start it on an attacked
    checkpoint, a model directory with an attack in its weights (all but llama-server can)."""

    engine: str | None
    continues: bool
    serves_checkpoints: bool = False


class Push(Protocol):
    """One kind of push: its name in item ids, its parts in the results JSON, what it does to the
    chat that is sent, what it adds to a cache key, and whether a model in a server can take it."""

    @property
    def name(self) -> str:
        """The condition's name, an item id part: ``pro_ic``, ``act_p4``, ``prefill_comply``."""
        ...

    @property
    def attack(self) -> str | None:
        """As ``--instrumental-attack`` names it; None for a suffix or a strength."""
        ...

    def parts(self) -> dict[str, object]:
        """What the results JSON records of it: ``suffix``, ``attack``, ``strength``."""
        ...

    def user_turn(self, prompt: str) -> str:
        """The user turn it sends for a scenario's ``prompt``."""
        ...

    @property
    def prefill(self) -> str | None:
        """The start of the answer it puts in the model's mouth; None: none."""
        ...

    def cache_fields(self) -> dict[str, object]:
        """What a cache key holds of it beyond the chat that is sent (a weight intervention's
        settings); the intervention adds how it was made (backends/interventions.py)."""
        ...

    def refusal(self, model: str, server: Server) -> str | None:
        """Why ``model``, running in ``server``, cannot take this push (a usage error naming the
        option); None when it can."""
        ...


@dataclass(frozen=True)
class _PushDefaults:
    """What a push has unless it says otherwise: no attack, the prompt as it is, no prefill,
    nothing beyond the chat in a cache key, and any server can take it."""

    @property
    def attack(self) -> str | None:
        return None

    def parts(self) -> dict[str, object]:
        return {"suffix": None, "attack": self.attack, "strength": None}

    def user_turn(self, prompt: str) -> str:
        return prompt

    @property
    def prefill(self) -> str | None:
        return None

    def cache_fields(self) -> dict[str, object]:
        return {}  # all of it is in the chat that is sent

    def refusal(self, model: str, server: Server) -> str | None:
        return None


@dataclass(frozen=True)
class _WeightPush(_PushDefaults):
    """A push on the weights or the forward pass (steering, ablation, fine-tuning): a model in this
    process takes it, and where it has a checkpoint form (``baked``) so does a model in a server
    the session starts on that checkpoint (backends/checkpoints.py)."""

    server_cannot: ClassVar[str]  # what a server cannot do
    mechanism: ClassVar[str]
    see_also: ClassVar[str] = " (docs/scale.md)"

    @property
    def asked(self) -> str:
        """The option that asks for it, as a message names it."""
        return f"--instrumental-attack {self.attack}"

    @property
    def baked(self) -> bool:
        """Whether it has a checkpoint form: its weights, saved, are the attacked model."""
        return False

    def refusal(self, model: str, server: Server) -> str | None:
        asked = self.asked
        if self.baked and server.serves_checkpoints:
            return None
        if self.baked:
            where = "served elsewhere" if server.engine is None else f"served by {server.engine}"
            return (
                f"{asked}: {model} is {where}, which cannot be started on the attacked checkpoint; "
                f"use --instrumental-engine=local, vllm, sglang or transformers-serve{self.see_also}"
            )
        return (
            f"{asked}: {model} runs in a server, which {self.server_cannot}; "
            f"{self.mechanism} needs a local model and --instrumental-engine=local{self.see_also}"
        )


@dataclass(frozen=True)
class SuffixPush(_PushDefaults):
    """A steering suffix appended to the user turn (``baseline``'s is empty: the plain prompt)."""

    suffix: Suffix

    @property
    def name(self) -> str:
        return self.suffix.name

    def parts(self) -> dict[str, object]:
        return {"suffix": self.suffix.name, "attack": None, "strength": None}

    def user_turn(self, prompt: str) -> str:
        return steer(prompt, self.suffix)


@dataclass(frozen=True)
class Prefill(_PushDefaults):
    """An attacker's start of the answer, which the model continues (the plain prompt otherwise)."""

    text: Suffix

    @property
    def name(self) -> str:
        return f"{PREFILL}_{self.text.name}"

    @property
    def attack(self) -> str:
        return f"{PREFILL}:{self.text.name}"

    @property
    def prefill(self) -> str:
        return self.text.text

    def refusal(self, model: str, server: Server) -> str | None:
        if server.continues:
            return None
        if server.engine is None:
            return (
                f"--instrumental-attack {PREFILL}: {model} is served elsewhere, and not every OpenAI-compatible API "
                "continues an assistant turn; serve a local model with --instrumental-engine=vllm or sglang"
            )
        return (
            f"--instrumental-attack {PREFILL}: {model} is served by {server.engine}, whose API does not continue "
            "an assistant turn; use --instrumental-engine=local, vllm or sglang"
        )


@dataclass(frozen=True)
class Activation(_WeightPush):
    """Activation steering at ``strength`` along the contrast vector (backends/steering.py)."""

    asked = "--instrumental-vector-strength"
    server_cannot = "cannot take a steering hook, and a steering vector has no checkpoint form"
    mechanism = "activation steering"
    see_also = " (or an engine plugin for steering: docs/scale.md)"
    strength: float

    @property
    def name(self) -> str:
        return activation_name(self.strength)

    def parts(self) -> dict[str, object]:
        return {"suffix": None, "attack": None, "strength": self.strength}

    def cache_fields(self) -> dict[str, object]:
        return {"strength": self.strength}


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
class Ablation(_WeightPush):
    """Directional ablation at ``layer`` (None: at every layer; backends/ablation.py)."""

    server_cannot = "cannot take an ablation hook, and removing a direction at one layer has no checkpoint form"
    mechanism = "directional ablation at one layer"
    layer: int | None = None

    @property
    def baked(self) -> bool:
        """Every write orthogonalised is a checkpoint; one layer's output projected is not."""
        return self.layer is None

    @property
    def name(self) -> str:
        """``ablate`` or ``ablate_l6``: an item id part."""
        return ABLATE if self.layer is None else f"{ABLATE}_l{self.layer}"

    @property
    def attack(self) -> str:
        """As ``--instrumental-attack`` names it: ``ablate`` or ``ablate:6``."""
        return ABLATE if self.layer is None else f"{ABLATE}:{self.layer}"

    def cache_fields(self) -> dict[str, object]:
        return {"attack": self.name}


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
class LoraAttack(_WeightPush):
    """Fine-tuning with LoRA for ``steps`` optimizer steps, at ``rank`` and learning rate ``lr``,
    with the run's ``seed``-th training seed (``--instrumental-seed`` plus it; backends/lora.py)."""

    server_cannot = "this session cannot fine-tune"
    mechanism = "fine-tuning"
    steps: int
    rank: int = DEFAULT_LORA_RANK
    lr: float = DEFAULT_LORA_LR
    seed: int = 0

    @property
    def name(self) -> str:
        """``lora16``; ``lora16_r4_lr0_001_s1`` with a rank, rate and seed of its own: an item id part."""
        rank = "" if self.rank == DEFAULT_LORA_RANK else f"_r{self.rank}"
        lr = "" if self.lr == DEFAULT_LORA_LR else "_lr" + f"{self.lr:g}".replace(".", "_").replace("-", "m")
        seed = "" if self.seed == 0 else f"_s{self.seed}"
        return f"{LORA}{self.steps}{rank}{lr}{seed}"

    @property
    def attack(self) -> str:
        """As ``--instrumental-attack`` names it: ``lora:16``, ``lora:16:r=4:lr=0.001:s=1``."""
        rank = "" if self.rank == DEFAULT_LORA_RANK else f":r={self.rank}"
        lr = "" if self.lr == DEFAULT_LORA_LR else f":lr={self.lr:g}"
        seed = "" if self.seed == 0 else f":s={self.seed}"
        return f"{LORA}:{self.steps}{rank}{lr}{seed}"

    @property
    def training(self) -> tuple[int, float, int]:
        """What an adapter's training run shares with the other budgets' (all but its length)."""
        return self.rank, self.lr, self.seed

    @property
    def baked(self) -> bool:
        return True  # the adapter, served or merged

    def cache_fields(self) -> dict[str, object]:
        return {"steps": self.steps, "rank": self.rank, "lr": self.lr}  # the seed: in the adapter's recipe


def attack_lora(text: str) -> LoraAttack | None:
    """The fine-tuning ``--instrumental-attack`` names (``lora:16``, ``lora:16:r=4:lr=1e-3:s=1``); None
    for another attack; a ValueError saying what is wrong with a malformed one."""
    kind, _, rest = text.partition(":")
    if kind != LORA:
        return None
    steps, *settings = rest.split(":")
    if not steps.isascii() or not steps.isdigit() or int(steps) > MAX_LORA_STEPS:
        raise ValueError(f"{text!r}: lora:STEPS takes a whole number of optimizer steps, from 0 to {MAX_LORA_STEPS}")
    values: dict[str, str] = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if key not in ("r", "lr", "s") or not equals or key in values:
            raise ValueError(f"{text!r}: after lora:STEPS come r=RANK, lr=RATE and s=SEED, each at most once")
        values[key] = value
    rank = values.get("r", str(DEFAULT_LORA_RANK))
    if not rank.isascii() or not rank.isdigit() or not 1 <= int(rank) <= MAX_LORA_RANK:
        raise ValueError(f"{text!r}: the rank r is a whole number from 1 to {MAX_LORA_RANK}")
    try:
        lr = float(values.get("lr", DEFAULT_LORA_LR))
    except ValueError:
        raise ValueError(f"{text!r}: the learning rate lr is a number") from None
    if not (0 < lr < 1) or float(f"{lr:g}") != lr:
        raise ValueError(f"{text!r}: the learning rate lr is between 0 and 1, with at most 6 significant digits")
    seed = values.get("s", "0")
    if not seed.isascii() or not seed.isdigit() or int(seed) >= MAX_ATTACK_SEEDS:
        raise ValueError(f"{text!r}: the seed s is a whole number from 0 to {MAX_ATTACK_SEEDS - 1}")
    return LoraAttack(int(steps), int(rank), lr, int(seed))


def parse_lora(name: str) -> LoraAttack | None:
    """The fine-tuning an item id part (``lora16_r4_lr0_001``) stands for; None for anything else."""
    match = _LORA.match(name)
    if match is None:
        return None
    try:
        lr = DEFAULT_LORA_LR if match["lr"] is None else float(match["lr"].replace("_", ".").replace("m", "-"))
    except ValueError:
        return None
    rank = DEFAULT_LORA_RANK if match["rank"] is None else int(match["rank"])
    return LoraAttack(int(match["steps"]), rank, lr, 0 if match["seed"] is None else int(match["seed"]))


@dataclass(frozen=True)
class PrefillAttack:
    """``--instrumental-attack prefill:NAME`` as parsed: the prefill text's name, resolved to a
    ``Prefill`` once the texts are loaded."""

    text_name: str

    @property
    def attack(self) -> str:
        return f"{PREFILL}:{self.text_name}"


Attack = PrefillAttack | Ablation | LoraAttack  # what --instrumental-attack parses to
_ATTACK_ORDER = (PrefillAttack, Ablation, LoraAttack)  # the order their conditions run in


def parse_attack(text: str) -> Attack:
    """``prefill:NAME``, ``ablate[:LAYER]`` or ``lora:STEPS[:r=R][:lr=LR]``; a ValueError otherwise."""
    typed: Attack | None = attack_ablation(text) or attack_lora(text)
    if typed is not None:
        return typed
    kind, colon, name = text.partition(":")
    if kind != PREFILL or not colon or not name:
        raise ValueError(
            f"{text!r} is not an attack; known: {PREFILL}:NAME (a text of prefills/), {ABLATE}, {ABLATE}:LAYER, "
            f"{LORA}:STEPS[:r=RANK][:lr=RATE]"
        )
    return PrefillAttack(name)


def seeded(attacks: Sequence[Attack], seeds: int) -> list[Attack]:
    """``attacks`` with each fine-tuning of a budget over 0 repeated for ``seeds`` training seeds
    (``--instrumental-attack-seeds``), in order; one that names its seed (``s=``) stays as given."""
    repeated: list[Attack] = []
    for attack in attacks:
        if isinstance(attack, LoraAttack) and attack.steps > 0 and attack.seed == 0:
            repeated += [replace(attack, seed=seed) for seed in range(seeds)]
        else:
            repeated.append(attack)
    return repeated


def attack_pushes(attacks: Sequence[Attack], prefills: Mapping[str, Suffix]) -> list[Push]:
    """The pushes of the attacks asked for, in run order (prefills, ablations, fine-tunings, each in
    the order given), each prefill with its text (``prefills``: by name, every one asked for)."""
    ordered = sorted(attacks, key=lambda a: _ATTACK_ORDER.index(type(a)))
    return [Prefill(prefills[a.text_name]) if isinstance(a, PrefillAttack) else a for a in ordered]


# Between a defence and the push it faces; "+" because pytest's -k grammar takes it in a name
# (">" it does not), and "-" joins an item id's parts.
DEFENSE_SEPARATOR = "+"


def defended_name(defense: str, push: str) -> str:
    """The name of ``push`` under ``defense``: ``anti_ic+pro_ic``."""
    return f"{defense}{DEFENSE_SEPARATOR}{push}"


@dataclass(frozen=True)
class Condition:
    """One condition: its ``push`` and the ``defense`` it runs under (a suffix whose text goes into
    the system prompt; None: undefended)."""

    push: Push
    defense: Suffix | None = None

    @property
    def name(self) -> str:
        return self.push.name if self.defense is None else defended_name(self.defense.name, self.push.name)

    @property
    def defense_text(self) -> str | None:
        """The defence's text as the system prompt gets it; None: undefended (or an empty text)."""
        return None if self.defense is None else self.defense.text.strip() or None

    def parts(self) -> dict[str, object]:
        """What the results JSON records of an item's condition, besides its name."""
        parts = self.push.parts()
        return {"defense": None if self.defense is None else self.defense.name, **parts}


PLAIN = Condition(SuffixPush(Suffix(BASELINE, "")))  # the unsuffixed, undefended prompt


def run_conditions(pushes: Sequence[Push], defenses: Sequence[Suffix] = ()) -> list[Condition]:
    """A run's conditions in item order: each push undefended, then each under each defence."""
    plain = [Condition(push) for push in pushes]
    return plain + [replace(c, defense=defense) for defense in defenses for c in plain]


def parse_condition(
    name: str, suffixes: Mapping[str, Suffix], prefills: Mapping[str, Suffix] | None = None
) -> Condition | None:
    """The condition a results file's ``name`` stands for, given the suffixes and prefills there
    are; None when it is none. Only where a results file is read: a run carries its conditions."""
    defense_name, separator, push_name = name.rpartition(DEFENSE_SEPARATOR)
    if separator and defense_name not in suffixes:
        return None
    defense = suffixes[defense_name] if separator else None
    prefills = prefills or {}
    push: Push | None = parse_ablation(push_name) or parse_lora(push_name)
    strength = activation_strength(push_name)
    if strength is not None:
        push = Activation(strength)
    prefill = push_name.removeprefix(f"{PREFILL}_")
    if push is None and push_name.startswith(f"{PREFILL}_") and prefill in prefills:
        push = Prefill(prefills[prefill])
    if push is None and push_name in suffixes:
        push = SuffixPush(suffixes[push_name])
    return None if push is None else Condition(push, defense)


def activation_pair(strengths: Sequence[float]) -> tuple[str, str] | None:
    """The activation gap's two conditions: the strongest positive and the strongest negative push."""
    positive, negative = [s for s in strengths if s > 0], [s for s in strengths if s < 0]
    if not positive or not negative:
        return None
    return activation_name(max(positive)), activation_name(min(negative))


def has_gap(conditions: Sequence[str]) -> bool:
    """Whether the suffix gap can be measured: both of its conditions ran."""
    return PRO_SUFFIX in conditions and ANTI_SUFFIX in conditions
