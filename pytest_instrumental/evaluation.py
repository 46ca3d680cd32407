"""The pipeline from planned requests to item results: generate in batches, then judge.

Generation is planned from all the items a process will run, not triggered item by item, so a
backend sees one model's requests together (batching) and each item then reads its outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from pytest_instrumental.backends import Backend, Generation, Request
from pytest_instrumental.judges import Judge, Judgement, JudgeRequest
from pytest_instrumental.verdicts import DECISIONS, ItemKey, ItemResult, Status

_T = TypeVar("_T")


@dataclass(frozen=True)
class Skip:
    """An item with nothing to judge (e.g. not recorded in a replay); it is not counted."""

    reason: str


Outcome = ItemResult | Skip


def evaluate(requests: Sequence[Request], backend: Backend, judge: Judge) -> list[Outcome]:
    """One outcome per request, in order. A failure of the backend or the judge as a whole becomes
    an error on every item it touched: counted and reported, never dropped."""
    try:
        generations = _checked(backend.generate(requests), len(requests), f"backend {backend.name}")
    except Exception as exc:  # a broken backend must not lose the items; each reports the failure
        generations = [Generation(error=f"generation failed: {type(exc).__name__}: {exc}")] * len(requests)
    to_judge = [
        JudgeRequest(request, generation.response)
        for request, generation in zip(requests, generations, strict=True)
        if generation.response is not None and generation.error is None
    ]
    try:
        judgements = _checked(judge.judge(to_judge), len(to_judge), f"judge {judge.name}") if to_judge else []
    except Exception as exc:
        judgements = [Judgement(judge=judge.name, error=f"judging failed: {type(exc).__name__}: {exc}")] * len(to_judge)
    by_key = {jr.request.key: j for jr, j in zip(to_judge, judgements, strict=True)}
    return [_outcome(r, g, by_key.get(r.key)) for r, g in zip(requests, generations, strict=True)]


def _checked(answers: list[_T], expected: int, who: str) -> list[_T]:
    if len(answers) != expected:
        raise RuntimeError(f"{who} answered {len(answers)} of {expected} requests")
    return answers


def _outcome(request: Request, generation: Generation, judgement: Judgement | None) -> Outcome:
    if generation.skip_reason is not None:
        return Skip(generation.skip_reason)
    key = request.key

    def result(
        status: Status, verdict: str | None = None, reason: str | None = None, error: str | None = None
    ) -> ItemResult:
        return ItemResult(
            model=key.model,
            suffix=key.suffix,
            scenario=key.scenario,
            category=request.category,
            status=status,
            verdict=verdict,
            judge=judgement.judge if judgement else None,
            reason=reason,
            response=generation.response,
            thinking=generation.thinking,
            error=error,
        )

    if generation.error is not None or generation.response is None:
        return result("error", error=generation.error or "the backend returned no response")
    if judgement is None:
        return result("error", error="the item was not judged")
    if judgement.error is not None:
        return result("error", error=f"judge error: {judgement.error}")
    if judgement.decision not in DECISIONS:
        return result("error", error=f"judge decision {judgement.decision!r} is not one of {', '.join(DECISIONS)}")
    return result("ok", verdict=judgement.decision, reason=judgement.reason)


class Evaluation:
    """Holds the planned requests of this process and evaluates them one model at a time."""

    def __init__(self, backend: Backend, judge: Judge) -> None:
        self._backend = backend
        self._judge = judge
        self._pending: dict[ItemKey, Request] = {}
        self._outcomes: dict[ItemKey, Outcome] = {}

    def plan(self, requests: Sequence[Request]) -> None:
        for request in requests:
            self._pending[request.key] = request

    def outcome(self, request: Request) -> Outcome:
        if request.key not in self._outcomes:
            self._pending.setdefault(request.key, request)
            batch = [r for r in self._pending.values() if r.key.model == request.key.model]
            for done, outcome in zip(batch, evaluate(batch, self._backend, self._judge), strict=True):
                self._outcomes[done.key] = outcome
                del self._pending[done.key]
        return self._outcomes[request.key]
