"""Models under test: what a generation backend is asked, what it answers, and its protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_instrumental.verdicts import ItemKey


@dataclass(frozen=True)
class Request:
    """One generation: the category context (system message) and the steered prompt (user message)."""

    key: ItemKey
    category: str
    context: str
    steered_prompt: str


@dataclass(frozen=True)
class Generation:
    """What a backend produced for one request.

    Exactly one of three shapes: a ``response`` (with optional ``thinking``), an ``error`` (the
    item counts as an error), or a ``skip_reason`` (the backend has nothing for this item, e.g.
    a replay without a recorded response; the item is skipped and not counted).
    """

    response: str | None = None
    thinking: str | None = None
    error: str | None = None
    skip_reason: str | None = None


class Backend(Protocol):
    """Generates responses for many requests at once, so that a backend can batch them."""

    @property
    def name(self) -> str: ...

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One Generation per request, in the same order."""
        ...
