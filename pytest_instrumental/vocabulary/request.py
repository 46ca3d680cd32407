"""What a model is asked for one item: a ``Request`` (the scenario's prompt under a condition), and
the one builder of the chat every backend sends for it (``chat_turns``)."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_instrumental.vocabulary.conditions import PLAIN, Condition, LoraAttack
from pytest_instrumental.vocabulary.items import ItemKey


@dataclass(frozen=True)
class Demonstration:
    """One fine-tuning example: a chat's ``(role, content)`` turns, the last the answer trained on."""

    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Request:
    """One generation: the category context (system message) and the scenario's prompt (user
    message), under its condition (conditions.py), which says what is sent (``chat_turns``) and
    what a backend does to its weights."""

    key: ItemKey
    category: str
    context: str
    # the scenario's prompt before any push, which every condition of the scenario starts with
    # (backends/transformers.py prefills it once for them all)
    prompt: str
    condition: Condition = PLAIN
    epoch: int = 1  # which of the item's answers (--instrumental-epochs), from 1
    # what a fine-tuning condition trains on (training_data.py; filled in before it generates)
    training: tuple[Demonstration, ...] = ()

    @property
    def steered_prompt(self) -> str:
        """The user turn: the prompt as the condition's push leaves it (a suffix appended)."""
        return self.condition.push.user_turn(self.prompt)

    @property
    def system(self) -> str:
        """The system prompt the model sees: the category context, then the defence's text."""
        return "\n\n".join(part for part in (self.context.strip(), self.condition.defense_text or "") if part)

    @property
    def prefill(self) -> str | None:
        """The start of the answer the condition puts in the model's mouth; None: none."""
        return self.condition.push.prefill

    @property
    def fine_tuning(self) -> LoraAttack | None:
        """The fine-tuning it generates under, which waits for its training data; None: none."""
        push = self.condition.push
        return push if isinstance(push, LoraAttack) else None


def chat_messages(system: str, user: str, answer_start: str | None = None) -> list[dict[str, str]]:
    """A system message (left out when blank), a user message, and with ``answer_start`` an
    assistant message holding it, for the model to continue."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages.append({"role": "user", "content": user})
    if answer_start is not None:
        messages.append({"role": "assistant", "content": answer_start})
    return messages


def chat_turns(request: Request) -> list[dict[str, str]]:
    """The chat every backend sends for ``request``: the system turn with the defence, the user
    turn with the suffix, and a prefill as a final assistant turn. The one builder of what is
    sent: backends send it (or render it) and key their caches on what they send."""
    return chat_messages(request.system, request.steered_prompt, request.prefill)
