"""What the fine-tuning attack trains on (backends/lora.py): demonstrations, chats whose last turn
is the answer trained on.

By default, the model's own answers: every scenario's pro_ic answer that the run's judge labelled
convergence, paired with the scenario's unsuffixed prompt (the category context as system turn),
so the adapter learns to answer the plain prompt as the pushed model did. The held-out rule of
activation vectors holds: a category's items are answered by an adapter trained on the other
categories' scenarios only. These answers are generated and judged (through the cache) even when
the run does not select pro_ic. Or the user's own demonstrations (``--instrumental-attack-data``,
chat-format JSONL), the same for every category.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import DATA_LIMIT, parse_json, read_text
from pytest_instrumental.plan import plan_requests, unsuffixed_requests
from pytest_instrumental.vocabulary.conditions import PRO_SUFFIX, Condition, Suffix, SuffixPush
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Demonstration, Request
from pytest_instrumental.vocabulary.scenarios import ScenarioSet
from pytest_instrumental.vocabulary.verdicts import ItemResult

MIN_DEMONSTRATIONS = 4  # fewer is no fine-tuning attack worth the name
ROLES = ("system", "user", "assistant")
OPTION = "--instrumental-attack-data"


@dataclass(frozen=True)
class TrainingData:
    """Where a run's fine-tuning attacks get their demonstrations: ``given`` (the user's file),
    or, when None, the model's own pro_ic answers of ``scenarios`` (every scenario of the suite)."""

    scenarios: ScenarioSet
    pro: Suffix
    given: tuple[Demonstration, ...] | None = None
    source: str = ""  # the user's file, by name

    def record(self) -> dict[str, object]:
        """What the adapters were trained on, for the results and the snapshot setup."""
        if self.given is None:
            return {"data": f"own {PRO_SUFFIX} answers judged convergence; each category's adapter from the others"}
        turns = [list(map(list, d.turns)) for d in self.given]
        digest = hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).hexdigest()
        return {"data": {"file": self.source, "demonstrations": len(self.given), "sha256": digest}}

    def support(self, model: str) -> list[Request]:
        """The requests whose answers the demonstrations are made of: every scenario's pro_ic
        request for ``model`` (none with the user's data)."""
        return (
            [] if self.given is not None else plan_requests([model], [Condition(SuffixPush(self.pro))], self.scenarios)
        )

    def attach(
        self, requests: Sequence[Request], answers: Mapping[ItemKey, ItemResult]
    ) -> tuple[list[Request], list[tuple[Request, str]]]:
        """The fine-tuning ``requests`` with their demonstrations, and those that have too few
        to train on, each with the reason. ``answers``: the support requests' results."""
        ready: list[Request] = []
        failed: list[tuple[Request, str]] = []
        own: dict[tuple[str, str], tuple[tuple[Demonstration, ...], int]] = {}  # once per model and category
        for request in requests:
            if self.given is not None:
                ready.append(replace(request, training=self.given))
                continue
            held_out = (request.key.model, request.category)
            if held_out not in own:
                own[held_out] = self._own(*held_out, answers)
            demonstrations, judged = own[held_out]
            budget = request.fine_tuning
            if len(demonstrations) < MIN_DEMONSTRATIONS and budget is not None and budget.steps > 0:
                failed.append((request, _too_few(len(demonstrations), judged)))
            else:
                ready.append(replace(request, training=demonstrations))
        return ready, failed

    def _own(
        self, model: str, held_out: str, answers: Mapping[ItemKey, ItemResult]
    ) -> tuple[tuple[Demonstration, ...], int]:
        """The demonstrations from the other categories' pro_ic answers judged convergence, and
        how many of those answers were judged at all."""
        demonstrations = []
        judged = 0
        for plain in unsuffixed_requests(self.scenarios, model):
            if plain.category == held_out:
                continue
            answer = answers.get(ItemKey(model, self.pro.name, plain.key.scenario))
            if answer is None or answer.status != "ok":
                continue
            judged += 1
            if answer.verdict == "convergence" and answer.response:
                turns = (("system", plain.system), ("user", plain.steered_prompt), ("assistant", answer.response))
                demonstrations.append(Demonstration(tuple((role, text) for role, text in turns if text)))
        return tuple(demonstrations), judged


def plan_training(
    suffixes: Mapping[str, Suffix], scenarios: ScenarioSet, attack_data: Path | None, fine_tunes: bool
) -> TrainingData | None:
    """What a run's fine-tuning trains on (None: it does not fine-tune); a usage error where it
    cannot be had."""
    if not fine_tunes:
        if attack_data is not None:
            raise InputError(f"{OPTION}: given without any --instrumental-attack lora:STEPS, it would train nothing")
        return None
    if PRO_SUFFIX not in suffixes:
        raise InputError(f"--instrumental-attack lora: the model's own answers to train on need suffix {PRO_SUFFIX}")
    given = None if attack_data is None else read_demonstrations(attack_data)
    return TrainingData(scenarios, suffixes[PRO_SUFFIX], given, "" if attack_data is None else attack_data.name)


def _too_few(found: int, judged: int) -> str:
    return (
        f"too few demonstrations to fine-tune on: {found} of the other categories' {judged} judged {PRO_SUFFIX} "
        f"answers were labelled convergence (at least {MIN_DEMONSTRATIONS} needed); give your own with {OPTION}"
    )


def read_demonstrations(path: Path) -> tuple[Demonstration, ...]:
    """The user's demonstrations: one JSON object per line, ``{"messages": [{"role", "content"}, ...]}``
    with roles system, user and assistant, the last an assistant's answer. Anything else is an
    InputError naming the line."""
    lines = read_text(path, DATA_LIMIT, OPTION).splitlines()
    demonstrations = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{OPTION}: {path}: line {number}"
        record = parse_json(line, where)
        demonstrations.append(Demonstration(_turns(record, where)))
    if len(demonstrations) < MIN_DEMONSTRATIONS:
        raise InputError(f"{OPTION}: {path} holds {len(demonstrations)} demonstrations; at least {MIN_DEMONSTRATIONS}")
    return tuple(demonstrations)


def _turns(record: object, where: str) -> tuple[tuple[str, str], ...]:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InputError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    turns = []
    for index, message in enumerate(messages, start=1):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise InputError(f"{where}: message {index} needs a role ({', '.join(ROLES)}) and a text content")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{where}: message {index} holds a lone surrogate, which no tokenizer takes") from None
        turns.append((role, content))
    if turns[-1][0] != "assistant" or not turns[-1][1].strip():
        raise InputError(f"{where}: the last message must be the assistant's answer to train on")
    if len(turns) < 2:
        raise InputError(f"{where}: an answer needs a prompt before it")
    return tuple(turns)
