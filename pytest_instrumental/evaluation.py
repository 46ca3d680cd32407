"""The pipeline from planned requests to item results: generate (through the cache), then judge.

Generation is planned from all the items a process will run, not triggered item by item, so a
backend sees one model's requests together (batching) and each item then reads its outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

from pytest_instrumental.backends import Backend, Generation, Request
from pytest_instrumental.cache import Cache
from pytest_instrumental.judges import Judge, Judgement, JudgeRequest
from pytest_instrumental.redact import redact
from pytest_instrumental.verdicts import DECISIONS, ItemKey, ItemResult, Status

_T = TypeVar("_T")
GENERATION = "generation"
VERDICT = "verdict"


@dataclass(frozen=True)
class Skip:
    """An item with nothing to judge (e.g. not recorded in a replay); it is not counted."""

    reason: str


Outcome = ItemResult | Skip


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...


# (description, total, already done) -> a context manager giving a Progress
ProgressFactory = Callable[[str, int, int], AbstractContextManager[Progress]]


def generate_all(
    requests: Sequence[Request], backend: Backend, cache: Cache | None, progress: ProgressFactory | None = None
) -> list[Generation]:
    """One Generation per request, in order: from the cache where it has them, else from the
    backend, storing each successful generation as it arrives (a killed run resumes). Errors
    are not stored, so a rerun tries them again. A backend that fails as a whole turns every
    request it still owed into an error."""
    keys = [backend.cache_key(r) for r in requests]
    found: list[Generation | None] = []
    for key in keys:
        hit = cache.get(GENERATION, key) if cache is not None and key is not None else None
        found.append(Generation(**hit) if hit is not None else None)
    todo = [i for i, g in enumerate(found) if g is None]
    # Only real generation (a cacheable backend) is worth a progress bar; a replay is instant.
    shown = progress if any(k is not None for k in keys) else None
    if todo:
        with _progress(shown, f"generating {backend.name}", len(requests), len(requests) - len(todo)) as bar:
            try:
                for position, generation in backend.generate([requests[i] for i in todo]):
                    index = todo[position]
                    if found[index] is not None:
                        raise RuntimeError(f"backend {backend.name} answered request {position} twice")
                    found[index] = generation
                    key = keys[index]
                    if (
                        cache is not None
                        and key is not None
                        and generation.error is None
                        and not generation.skip_reason
                    ):
                        cache.put(GENERATION, key, asdict(generation))
                    bar.update(1)
            except Exception as exc:  # a broken backend must not lose the items; each reports it
                failure = Generation(error=redact(f"generation failed: {type(exc).__name__}: {exc}"))
                found = [g if g is not None else failure for g in found]
    missing = [i for i, g in enumerate(found) if g is None]
    if missing:
        message = f"backend {backend.name} gave no answer for {len(missing)} of {len(requests)} requests"
        found = [g if g is not None else Generation(error=message) for g in found]
    return [g for g in found if g is not None]


class _NoProgress:
    def update(self, n: int = 1) -> object:
        return None


class _NoProgressContext(AbstractContextManager[Progress]):
    def __enter__(self) -> Progress:
        return _NoProgress()

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(factory: ProgressFactory | None, desc: str, total: int, done: int) -> AbstractContextManager[Progress]:
    return factory(desc, total, done) if factory is not None else _NoProgressContext()


def evaluate(
    requests: Sequence[Request],
    backend: Backend,
    judge: Judge,
    cache: Cache | None = None,
    progress: ProgressFactory | None = None,
) -> list[Outcome]:
    """One outcome per request, in order. A failure of the backend or the judge as a whole becomes
    an error on every item it touched: counted and reported, never dropped."""
    generations = generate_all(requests, backend, cache, progress)
    to_judge = [
        JudgeRequest(request, generation.response)
        for request, generation in zip(requests, generations, strict=True)
        if generation.response is not None and generation.error is None
    ]
    judgements = judge_all(to_judge, judge, cache)
    by_key = {jr.request.key: j for jr, j in zip(to_judge, judgements, strict=True)}
    return [_outcome(r, g, by_key.get(r.key)) for r, g in zip(requests, generations, strict=True)]


def judge_all(requests: Sequence[JudgeRequest], judge: Judge, cache: Cache | None) -> list[Judgement]:
    """One Judgement per request, in order: cached verdicts where the cache has them (keyed by
    judge, rubric, prompt and response, so a changed rubric or judge never serves a stale one),
    the judge for the rest. Judge errors are not cached, so a rerun asks again."""
    keys = [judge.cache_key(r) for r in requests]
    found: list[Judgement | None] = []
    for key in keys:
        hit = cache.get(VERDICT, key) if cache is not None and key is not None else None
        found.append(Judgement(**hit) if hit is not None else None)
    todo = [i for i, j in enumerate(found) if j is None]
    if todo:
        try:
            answers = _checked(judge.judge([requests[i] for i in todo]), len(todo), f"judge {judge.name}")
        except Exception as exc:  # a broken judge must not lose the items; each reports it
            answers = [Judgement(judge=judge.name, error=redact(f"judging failed: {type(exc).__name__}: {exc}"))] * len(
                todo
            )
        for index, answer in zip(todo, answers, strict=True):
            found[index] = answer
            key = keys[index]
            if cache is not None and key is not None and answer.error is None:
                cache.put(VERDICT, key, asdict(answer))
    return [j for j in found if j is not None]


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
            truncated=generation.truncated,
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
    """Holds the planned requests of this process and evaluates them one model at a time; a
    model's backend is closed (its weights freed) once all its planned items are done."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        judge: Judge,
        cache: Cache | None = None,
        progress: ProgressFactory | None = None,
    ) -> None:
        self._backends = backends
        self._judge = judge
        self._cache = cache
        self._progress = progress
        self._pending: dict[ItemKey, Request] = {}
        self._outcomes: dict[ItemKey, Outcome] = {}

    def plan(self, requests: Sequence[Request]) -> None:
        for request in requests:
            self._pending[request.key] = request

    def outcome(self, request: Request) -> Outcome:
        if request.key not in self._outcomes:
            model = request.key.model
            self._pending.setdefault(request.key, request)
            batch = [r for r in self._pending.values() if r.key.model == model]
            backend = self._backends[model]
            outcomes = evaluate(batch, backend, self._judge, self._cache, self._progress)
            for done, outcome in zip(batch, outcomes, strict=True):
                self._outcomes[done.key] = outcome
                del self._pending[done.key]
            backend.close()
        return self._outcomes[request.key]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._judge.close()
        if self._cache is not None:
            self._cache.close()
