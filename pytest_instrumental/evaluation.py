"""The pipeline from planned requests to item results: generate and judge, through the cache.

Generation is planned from all the items a process will run, not triggered item by item, so a
backend sees one model's requests together (batching) and each item then reads its outcome.
Judging overlaps generation: each response goes to the judge on a worker thread as soon as it
arrives, while the backend generates the next ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from pytest_instrumental.backends.protocol import Backend, Generation, Sends
from pytest_instrumental.cache import Cache
from pytest_instrumental.cost import Cost
from pytest_instrumental.judges.protocol import Judge, Judgement, JudgeRequest
from pytest_instrumental.progress import ProgressFactory, progress_bar
from pytest_instrumental.text import redact, visible
from pytest_instrumental.training_data import TrainingData
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.verdicts import DECISIONS, ItemResult

GENERATION = "generation"
VERDICT = "verdict"


@dataclass(frozen=True)
class Skip:
    """An item with nothing to judge (e.g. not recorded in a replay); it is not counted."""

    reason: str


Outcome = ItemResult | Skip


def generate_all(
    requests: Sequence[Request],
    backend: Backend,
    cache: Cache | None,
    progress: ProgressFactory | None = None,
    on_generation: Callable[[int, Generation], object] | None = None,
) -> list[Generation]:
    """One Generation per request, in order: from the cache where it has them, else from the
    backend, storing each successful generation as it arrives (a killed run resumes). Errors
    are not stored, so a rerun tries them again. A backend that fails as a whole turns every
    request it still owed into an error. ``on_generation(index, generation)`` sees each cached
    or generated answer as soon as it is known."""
    keys = [backend.cache_key(r) for r in requests]
    found: list[Generation | None] = []
    for index, key in enumerate(keys):
        cached = cache.get(GENERATION, key, Generation) if cache is not None and key is not None else None
        found.append(cached)
        if cached is not None and on_generation is not None:
            on_generation(index, cached)
    todo = [i for i, g in enumerate(found) if g is None]
    unique, copies = _same_answers(todo, keys)
    # Only real generation (a cacheable backend) is worth a progress bar; a replay is instant.
    shown = progress if any(k is not None for k in keys) else None
    if todo:
        with progress_bar(shown, f"generating {backend.name}", len(requests), len(requests) - len(todo)) as bar:
            try:
                for position, generation in backend.generate([requests[i] for i in unique]):
                    index = unique[position]
                    if found[index] is not None:
                        raise RuntimeError(f"backend {backend.name} answered request {position} twice")
                    key = keys[index]
                    if (
                        cache is not None
                        and key is not None
                        and generation.error is None
                        and not generation.skip_reason
                    ):
                        cache.put(GENERATION, key, asdict(generation))
                    for same in [index, *copies.get(index, [])]:
                        found[same] = generation
                        bar.update(1)
                        if on_generation is not None:
                            on_generation(same, generation)
            except (Exception, SystemExit) as exc:  # a broken backend (a plugin's sys.exit too) loses no item
                failure = Generation(error=redact(f"generation failed: {type(exc).__name__}: {exc}"))
                found = [g if g is not None else failure for g in found]
    missing = [i for i, g in enumerate(found) if g is None]
    if missing:
        message = f"backend {backend.name} gave no answer for {len(missing)} of {len(requests)} requests"
        found = [g if g is not None else Generation(error=message) for g in found]
    return [g for g in found if g is not None]


def _same_answers(todo: Sequence[int], keys: Sequence[dict[str, Any] | None]) -> tuple[list[int], dict[int, list[int]]]:
    """The requests to generate, one per cache key (greedy epochs, and ``lora0`` beside the plain
    prompt, are the same generation), and for each the others that get its answer."""
    first: dict[str, int] = {}
    unique: list[int] = []
    copies: dict[int, list[int]] = {}
    for index in todo:
        key = keys[index]
        if key is None:  # not cacheable (a replay): each answers for itself
            unique.append(index)
            continue
        text = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
        if text in first:
            copies.setdefault(first[text], []).append(index)
        else:
            first[text] = index
            unique.append(index)
    return unique, copies


def evaluate(
    requests: Sequence[Request],
    backend: Backend,
    judge: Judge,
    cache: Cache | None = None,
    progress: ProgressFactory | None = None,
    on_outcome: Callable[[Request, Outcome], object] | None = None,
) -> list[Outcome]:
    """One outcome per request, in order. Each response is judged while the backend generates
    the next ones, and ``on_outcome`` sees each item's outcome as soon as it is known, so what
    finished is kept when the run is stopped halfway (Ctrl-C): then the answers already generated
    are judged before the interruption goes on. A failure of the backend or the judge as a whole
    becomes an error on every item it touched: counted and reported, never dropped."""
    outcomes: dict[int, Outcome] = {}
    answered: dict[Answer, int] = {_answer(r): i for i, r in enumerate(requests)}
    generations: dict[int, Generation] = {}

    def settle(index: int, judgement: Judgement | None) -> None:
        outcomes[index] = _outcome(requests[index], generations[index], judgement)
        if on_outcome is not None:
            on_outcome(requests[index], outcomes[index])

    judging = _Judging(judge, cache, lambda request, judgement: settle(answered[_answer(request)], judgement))

    def judge_when_answered(index: int, generation: Generation) -> None:
        generations[index] = generation
        if generation.response is not None and generation.error is None and generation.skip_reason is None:
            judging.offer(JudgeRequest(requests[index], generation.response))
        else:
            settle(index, None)
        judging.poll()

    try:
        for index, generation in enumerate(generate_all(requests, backend, cache, progress, judge_when_answered)):
            if index not in generations:  # a backend failure filled in what it still owed
                judge_when_answered(index, generation)
    finally:
        judging.finish()
    return [outcomes[i] for i in range(len(requests))]


Answer = tuple[ItemKey, int]  # an item's answer: the item and the epoch


def _answer(request: Request) -> Answer:
    return request.key, request.epoch


Verdicts = Callable[[Request, Judgement], object]  # told each verdict as it is known


class _Judging:
    """Judges responses on one worker thread while the caller goes on (generating). Responses
    that arrive while the judge is busy go to it together as its next batch, so a concurrent
    judge (an API) still sees many requests at once. The cache, and ``on_verdict``, are only
    touched by the calling thread."""

    def __init__(self, judge: Judge, cache: Cache | None, on_verdict: Verdicts) -> None:
        self._judge = judge
        self._cache = cache
        self._on_verdict = on_verdict
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: list[tuple[JudgeRequest, dict[str, object] | None]] = []
        self._running: tuple[list[tuple[JudgeRequest, dict[str, object] | None]], Future[list[Judgement]]] | None = None

    def offer(self, request: JudgeRequest) -> None:
        key = self._judge.cache_key(request)
        hit = self._cache.get(VERDICT, key, cached_judgement) if self._cache is not None and key is not None else None
        if hit is not None:
            self._on_verdict(request.request, hit)
        else:
            self._waiting.append((request, key))

    def poll(self, wait: bool = False) -> None:
        """Take the finished batch's verdicts, if any, and start the next batch if the judge is idle."""
        if self._running is not None and (wait or self._running[1].done()):
            batch, future = self._running
            self._running = None
            for (request, key), answer in zip(batch, future.result(), strict=True):
                if self._cache is not None and key is not None and answer.error is None:
                    self._cache.put(VERDICT, key, asdict(answer))
                self._on_verdict(request.request, answer)
        if self._running is None and self._waiting:
            batch, self._waiting = self._waiting, []
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="instrumental-judge")
            self._running = (batch, self._executor.submit(_ask, self._judge, [r for r, _ in batch]))

    def finish(self) -> None:
        """Wait for every offered request's verdict."""
        while self._running is not None or self._waiting:
            self.poll(wait=True)
        if self._executor is not None:
            self._executor.shutdown()


def cached_judgement(**entry: Any) -> Judgement:
    """A verdict from the cache; a row that holds no valid decision (damaged, or from an older
    judge) raises, so the cache counts it unreadable and the answer is judged again."""
    judgement = Judgement(**entry)
    if judgement.error is not None or judgement.decision not in DECISIONS:
        raise ValueError(f"cached verdict {judgement.decision!r} is not one of {', '.join(DECISIONS)}")
    return judgement


def _ask(judge: Judge, requests: list[JudgeRequest]) -> list[Judgement]:
    """The judge's answers; a judge that fails as a whole (or miscounts) gives each request an error."""
    try:
        answers = judge.judge(requests)
        if len(answers) != len(requests):
            raise RuntimeError(f"judge {judge.name} answered {len(answers)} of {len(requests)} requests")
        return answers
    except (Exception, SystemExit) as exc:  # a broken judge (a plugin's sys.exit too) loses no item
        return [Judgement(judge=judge.name, error=redact(f"judging failed: {type(exc).__name__}: {exc}"))] * len(
            requests
        )


def _outcome(request: Request, generation: Generation, judgement: Judgement | None) -> Outcome:
    if generation.skip_reason is not None:
        return Skip(generation.skip_reason)
    judge = judgement.judge if judgement else None
    answer = {"response": generation.response, "thinking": generation.thinking, "truncated": generation.truncated}

    def failed(error: str) -> ItemResult:
        return ItemResult.failed(request, error, judge=judge, **answer)

    if generation.error is not None or generation.response is None:
        return failed(generation.error or "the backend returned no response")
    if judgement is None:
        return failed("the item was not judged")
    if judgement.error is not None:
        return failed(f"judge error: {judgement.error}")
    if judgement.decision not in DECISIONS:
        return failed(f"judge decision {judgement.decision!r} is not one of {', '.join(DECISIONS)}")
    return ItemResult.of(request, "ok", verdict=judgement.decision, reason=judgement.reason, judge=judge, **answer)


def _waits_for_training(request: Request) -> bool:
    """Whether the request's answer (and its cache key) waits for what it is fine-tuned on; 0 steps
    is the plain model, which trains on nothing."""
    budget = request.fine_tuning
    return budget is not None and budget.steps > 0 and not request.training


class Evaluation:
    """Holds the planned requests of this process and evaluates them one model at a time, every
    epoch of every item together; a model's backend is closed (its weights freed) once all its
    planned items are done. Fine-tuned items go last: what they train on (``training``) may be
    the model's own answers, evaluated first."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        judge: Judge,
        cache: Cache | None = None,
        progress: ProgressFactory | None = None,
        epochs: int = 1,
        training: TrainingData | None = None,
    ) -> None:
        self._backends = backends
        self._training = training
        self._judge = judge
        self._cache = cache
        self._progress = progress
        self.epochs = epochs
        self._pending: dict[Answer, Request] = {}
        self._outcomes: dict[Answer, Outcome] = {}
        self._closing_problems: list[str] = []

    def plan(self, requests: Sequence[Request]) -> None:
        self._pending.update(self._in_epochs(requests))

    def _in_epochs(self, requests: Sequence[Request]) -> dict[Answer, Request]:
        """Each request once per epoch."""
        return {
            (request.key, epoch): replace(request, epoch=epoch)
            for request in requests
            for epoch in range(1, self.epochs + 1)
        }

    def cost(self, requests: Sequence[Request] | None = None) -> Cost:
        """What evaluating the planned requests (or these, each in every epoch) will take, from the
        cache as it is now (cost.py)."""
        pending = list((self._pending if requests is None else self._in_epochs(requests)).values())
        generations = cached_generations = judge_calls = cached_verdicts = recorded_verdicts = 0
        sends: dict[str, int] = {}
        for model in sorted({r.key.model for r in pending}):
            of_model = [r for r in pending if r.key.model == model]
            backend = self._backends[model]
            # a fine-tuned request's key holds the answers it trains on: known where they are cached
            untrained = [r for r in of_model if _waits_for_training(r)]
            trained = self._trained_from_cache(untrained, backend)
            waiting = len(untrained) - len(trained)  # their training answers are made first: counted as new
            keyed = [r for r in of_model if not _waits_for_training(r)] + trained
            judge_calls += waiting
            keys = [backend.cache_key(r) for r in keyed]
            found = [self._cached(GENERATION, key, Generation) for key in keys]
            cacheable = [i for i, key in enumerate(keys) if key is not None]  # a replay generates nothing
            unique, _ = _same_answers(cacheable, keys)
            made = sum(1 for i in unique if found[i] is None) + waiting
            generations += len(unique) + waiting
            cached_generations += sum(1 for i in unique if found[i] is not None)
            if isinstance(backend, Sends) and made:
                sends[f"model {model} at {backend.endpoint}"] = made
            for request, generation in zip(keyed, found, strict=True):
                response = None if generation is None else generation.response
                key = self._judge.cache_key(JudgeRequest(request, response or ""))
                if key is None:  # a judge that keys nothing reads recorded verdicts: no call
                    recorded_verdicts += 1
                    continue
                judge_calls += 1
                if response is not None:
                    cached_verdicts += self._cached(VERDICT, key, cached_judgement) is not None
        if isinstance(self._judge, Sends) and judge_calls > cached_verdicts:
            sends[f"judge {self._judge.name} at {self._judge.endpoint}"] = judge_calls - cached_verdicts
        items = len({r.key for r in pending})
        return Cost(
            items, len(pending), generations, cached_generations, judge_calls, cached_verdicts, sends, recorded_verdicts
        )

    def _trained_from_cache(self, requests: list[Request], backend: Backend) -> list[Request]:
        """Fine-tuning ``requests`` with the demonstrations they will train on, where every answer
        those are made of is in the cache (or the user gave them); none otherwise."""
        if not requests or self._training is None:
            return []
        answers: dict[ItemKey, ItemResult] = {}
        for request in self._training.support(requests[0].key.model):
            generation = self._cached(GENERATION, backend.cache_key(request), Generation)
            if generation is None or generation.response is None:
                return []
            judge_request = JudgeRequest(request, generation.response)
            judgement = self._cached(VERDICT, self._judge.cache_key(judge_request), cached_judgement)
            if judgement is None:
                return []
            outcome = _outcome(request, generation, judgement)
            if isinstance(outcome, ItemResult):
                answers[request.key] = outcome
        ready, _ = self._training.attach(requests, answers)
        return ready

    def _cached(self, kind: str, key: dict[str, Any] | None, factory: Callable[..., Any]) -> Any:
        return (
            self._cache.get(kind, key, factory, counted=False) if self._cache is not None and key is not None else None
        )

    def outcomes(self, request: Request) -> list[Outcome]:
        """The item's outcome in each epoch, in order."""
        if (request.key, 1) not in self._outcomes:
            model = request.key.model
            for epoch in range(1, self.epochs + 1):
                self._pending.setdefault((request.key, epoch), replace(request, epoch=epoch))
            batch = [r for r in self._pending.values() if r.key.model == model]
            backend = self._backends[model]
            try:
                if self._training is not None and any(r.fine_tuning is not None for r in batch):
                    batch = self._with_training(batch, backend, self._training)
                evaluate(batch, backend, self._judge, self._cache, self._progress, self._record)
            finally:
                self._close(backend)
        return [self._outcomes[request.key, epoch] for epoch in range(1, self.epochs + 1)]

    def _with_training(self, batch: list[Request], backend: Backend, training: TrainingData) -> list[Request]:
        """The batch's other items evaluated with the answers the fine-tuning trains on (those
        not planned are not items: they are cached, never reported); then its fine-tuning items
        with their demonstrations, those with too few to train on failed with the reason."""
        tuned = [r for r in batch if r.fine_tuning is not None]
        others = [r for r in batch if r.fine_tuning is None]
        planned = {_answer(r) for r in others}
        support = [r for r in training.support(batch[0].key.model) if _answer(r) not in planned]
        answers: dict[ItemKey, ItemResult] = {}

        def keep(request: Request, outcome: Outcome) -> None:
            if _answer(request) in planned:
                self._record(request, outcome)
            if request.epoch == 1 and isinstance(outcome, ItemResult):
                answers[request.key] = outcome

        evaluate([*others, *support], backend, self._judge, self._cache, self._progress, keep)
        ready, failed = training.attach(tuned, answers)
        for request, reason in failed:
            self._record(request, ItemResult.failed(request, reason))
        return ready

    def _record(self, request: Request, outcome: Outcome) -> None:
        self._outcomes[_answer(request)] = outcome
        self._pending.pop(_answer(request), None)

    def finished(self) -> list[ItemResult]:
        """The results of every item whose every epoch has finished, also of a model whose
        evaluation was interrupted halfway."""
        done = {key for key, epoch in self._outcomes if epoch == 1}
        complete = [k for k in done if all((k, e) in self._outcomes for e in range(1, self.epochs + 1))]
        return [
            outcome
            for key in sorted(complete)
            for epoch in range(1, self.epochs + 1)
            if isinstance(outcome := self._outcomes[key, epoch], ItemResult)
        ]

    @property
    def judge(self) -> Judge:
        return self._judge

    def problems(self) -> list[str]:
        """What went wrong around the results (the cache, a backend that failed to close), one line each."""
        return [*self._closing_problems, *(self._cache.problems() if self._cache is not None else [])]

    def _close(self, part: Backend | Judge) -> None:
        """``part.close()``: a failure to free what it holds is a warning, never a judged item lost."""
        try:
            part.close()
        except (Exception, SystemExit) as exc:
            problem = redact(f"closing {visible(part.name)} failed: {type(exc).__name__}: {exc}")
            if problem not in self._closing_problems:
                self._closing_problems.append(problem)

    def close(self) -> None:
        for backend in self._backends.values():
            self._close(backend)
        self._close(self._judge)
        if self._cache is not None:
            self._cache.close()
