"""Judges: what a judge is asked, what it answers, and its protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_instrumental.backends import Request


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


class Judge(Protocol):
    @property
    def name(self) -> str: ...

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        """One Judgement per request, in the same order."""
        ...
