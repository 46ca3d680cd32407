"""What a judge is asked, what it answers, and the protocol every judge follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_instrumental.text import clean_optional
from pytest_instrumental.vocabulary.request import Request


@dataclass(frozen=True)
class JudgeRequest:
    """The judge sees the steered prompt and the response, never the model's reasoning."""

    request: Request
    response: str


@dataclass(frozen=True)
class Judgement:
    """A ``decision`` (one of verdicts.DECISIONS) with its ``reason``, or an ``error``.

    ``judge`` names who decided, so a replayed verdict keeps the name of the judge that made it.
    """

    judge: str
    decision: str | None = None
    reason: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        for name in ("decision", "reason", "error"):  # text from a judge or server (text.py)
            object.__setattr__(self, name, clean_optional(getattr(self, name)))


class Judge(Protocol):
    @property
    def name(self) -> str: ...

    def cache_key(self, request: JudgeRequest) -> dict[str, object] | None:
        """What determines this verdict (judge id, rubric hash, steered prompt, response), or
        None when verdicts must not be cached (replay)."""
        ...

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        """One Judgement per request, in the same order."""
        ...

    def close(self) -> None:
        """Free what the judge holds (connections, weights)."""
        ...
