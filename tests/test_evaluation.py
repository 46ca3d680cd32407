import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_instrumental.backends.protocol import Backend, Generation
from pytest_instrumental.cache import Cache
from pytest_instrumental.evaluation import Evaluation, Skip, evaluate, generate_all
from pytest_instrumental.judges.protocol import Judgement, JudgeRequest
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.verdicts import ItemResult
from tests import helpers
from tests.helpers import ScriptedBackend, cached_rows


def request(scenario: str, model: str = "m") -> Request:
    return helpers.request(f"prompt {scenario}", model=model, scenario=scenario)


class ScriptedJudge:
    name = "scripted-judge"

    def __init__(self, decisions: dict[str, str]) -> None:
        self.decisions = decisions
        self.seen: list[JudgeRequest] = []

    def cache_key(self, request: JudgeRequest) -> dict[str, object]:
        return {"judge": self.name, "prompt": request.request.steered_prompt, "response": request.response}

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        self.seen += requests
        return [Judgement(self.name, self.decisions[r.response], "because") for r in requests]

    def close(self) -> None:
        return None


def test_each_generation_shape_becomes_its_outcome() -> None:
    backend = ScriptedBackend(
        {
            "a": Generation(response="yes", thinking="hmm"),
            "b": Generation(error="empty generation"),
            "c": Generation(skip_reason="not recorded"),
            "d": Generation(response="garbage", truncated=True),
        }
    )
    judge = ScriptedJudge({"yes": "convergence", "garbage": "maybe"})
    a, b, c, d = evaluate([request(s) for s in "abcd"], backend, judge)
    assert isinstance(a, ItemResult)
    assert (a.status, a.verdict, a.judge, a.reason, a.thinking) == (
        "ok",
        "convergence",
        "scripted-judge",
        "because",
        "hmm",
    )
    assert isinstance(b, ItemResult) and (b.status, b.error) == ("error", "empty generation")
    assert c == Skip("not recorded")
    assert isinstance(d, ItemResult) and d.status == "error" and d.truncated
    assert d.error == "judge decision 'maybe' is not one of convergence, no_convergence, safety_refusal, nonsensical"
    # The judge saw the responses only, never the reasoning, and nothing for b and c.
    assert [r.response for r in judge.seen] == ["yes", "garbage"]


def test_a_backend_failing_midway_keeps_what_it_produced_and_errors_the_rest() -> None:
    backend = ScriptedBackend({s: Generation(response="yes") for s in "abc"}, fail_after=1)
    outcomes = evaluate([request(s) for s in "abc"], backend, ScriptedJudge({"yes": "convergence"}))
    assert [o.status for o in outcomes if isinstance(o, ItemResult)] == ["ok", "error", "error"]
    assert all(
        "ConnectionError: server returned 500" in (o.error or "") for o in outcomes[1:] if isinstance(o, ItemResult)
    )


def test_a_judge_answering_the_wrong_number_of_items_is_an_error_not_a_guess() -> None:
    class ShortJudge(ScriptedJudge):
        def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
            return super().judge(requests)[:-1]

    backend = ScriptedBackend({s: Generation(response="yes") for s in "ab"})
    outcomes = evaluate([request(s) for s in "ab"], backend, ShortJudge({"yes": "convergence"}))
    assert all(
        isinstance(o, ItemResult) and o.verdict is None and "answered 0 of 1 requests" in (o.error or "")
        for o in outcomes
    )


def test_the_cache_serves_a_rerun_and_keeps_what_a_killed_run_finished(tmp_path: Path) -> None:
    answers = {s: Generation(response=f"answer {s}") for s in "abc"}
    requests = [request(s) for s in "abc"]
    cache = Cache(tmp_path / "cache.sqlite")
    killed = ScriptedBackend(answers, fail_after=2)
    first = generate_all(requests, killed, cache)
    assert [g.error is None for g in first] == [True, True, False]
    resumed = ScriptedBackend(answers)
    assert generate_all(requests, resumed, cache) == [answers[s] for s in "abc"]
    assert resumed.batches == [["c"]]  # only what the killed run had not finished
    warm = ScriptedBackend(answers)
    assert generate_all(requests, warm, Cache(tmp_path / "cache.sqlite")) == [answers[s] for s in "abc"]
    assert warm.batches == []


def test_errors_are_not_cached(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.sqlite")
    generate_all([request("a")], ScriptedBackend({"a": Generation(error="timeout")}), cache)
    retry = ScriptedBackend({"a": Generation(response="ok now")})
    assert generate_all([request("a")], retry, cache) == [Generation(response="ok now")]


def test_evaluation_generates_one_models_planned_items_in_one_batch_then_frees_it() -> None:
    first_model = ScriptedBackend({s: Generation(response="yes") for s in "ab"})
    other_model = ScriptedBackend({"c": Generation(response="yes")})
    backends: dict[str, Backend] = {"m": first_model, "other": other_model}
    evaluation = Evaluation(backends, ScriptedJudge({"yes": "no_convergence"}))
    planned = [request("a"), request("b"), request("c", model="other")]
    evaluation.plan(planned)
    (first,) = evaluation.outcomes(planned[0])
    assert first_model.batches == [["a", "b"]] and first_model.closed == 1
    assert evaluation.outcomes(planned[1]) is not None and first_model.batches == [["a", "b"]]
    assert isinstance(first, ItemResult) and first.verdict == "no_convergence"
    assert other_model.batches == []
    evaluation.outcomes(planned[2])
    assert other_model.batches == [["c"]]


def test_responses_are_judged_while_the_backend_generates_the_next_ones() -> None:
    first_judged = threading.Event()
    seen_by_backend: list[bool] = []

    class WaitingBackend(ScriptedBackend):
        def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
            for index, r in enumerate(requests):
                if index > 0:  # judging runs beside generation, so the first verdict comes meanwhile
                    seen_by_backend.append(first_judged.wait(timeout=10))
                yield index, self.answers[r.key.scenario]

    class SignallingJudge(ScriptedJudge):
        def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
            answers = super().judge(requests)
            first_judged.set()
            return answers

    backend = WaitingBackend({s: Generation(response="yes") for s in "abc"})
    outcomes = evaluate([request(s) for s in "abc"], backend, SignallingJudge({"yes": "convergence"}))
    assert seen_by_backend == [True, True]
    assert [o.verdict for o in outcomes if isinstance(o, ItemResult)] == ["convergence"] * 3


def test_a_judge_that_fails_as_a_whole_marks_its_items_as_errors(tmp_path: Path) -> None:
    class BrokenJudge(ScriptedJudge):
        def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
            raise ConnectionError("judge endpoint down")

    cache = Cache(tmp_path / "cache.sqlite")
    outcomes = evaluate([request("a")], ScriptedBackend({"a": Generation(response="yes")}), BrokenJudge({}), cache)
    assert [(o.status, o.error) for o in outcomes if isinstance(o, ItemResult)] == [
        ("error", "judge error: judging failed: ConnectionError: judge endpoint down")
    ]
    cache.close()
    assert cached_rows(tmp_path, "verdict") == 0


class SampledBackend(ScriptedBackend):
    """Its cache key holds the epoch, as a sampled model's holds each epoch's seed."""

    def cache_key(self, request: Request) -> dict[str, Any]:
        return {**super().cache_key(request), "epoch": request.epoch}


def test_each_epoch_of_an_item_is_generated_and_judged_in_the_models_batch() -> None:
    backend = SampledBackend({s: Generation(response="yes") for s in "ab"})
    evaluation = Evaluation({"m": backend}, ScriptedJudge({"yes": "convergence"}), epochs=3)
    planned = [request("a"), request("b")]
    evaluation.plan(planned)
    outcomes = evaluation.outcomes(planned[1])
    assert backend.batches == [["a", "a", "a", "b", "b", "b"]]  # every epoch in one batch
    assert [o.epoch for o in outcomes if isinstance(o, ItemResult)] == [1, 2, 3]
    assert all(isinstance(o, ItemResult) and o.key == planned[1].key for o in outcomes)


def test_requests_with_one_cache_key_generate_once_and_each_gets_the_answer() -> None:
    # greedy epochs share their key (decoding adds nothing to it), as lora0 shares the plain prompt's
    backend = ScriptedBackend({s: Generation(response="yes") for s in "ab"})
    evaluation = Evaluation({"m": backend}, ScriptedJudge({"yes": "convergence"}), epochs=3)
    planned = [request("a"), request("b")]
    evaluation.plan(planned)
    outcomes = evaluation.outcomes(planned[1])
    assert backend.batches == [["a", "b"]]
    assert [(o.epoch, o.response) for o in outcomes if isinstance(o, ItemResult)] == [
        (1, "yes"),
        (2, "yes"),
        (3, "yes"),
    ]
    seen = generate_all([request("a"), request("a"), request("b")], backend, None)
    assert backend.batches[-1] == ["a", "b"] and [g.response for g in seen] == ["yes"] * 3


def test_a_cached_verdict_with_an_invalid_decision_is_judged_again(tmp_path: Path) -> None:
    import json
    import sqlite3

    cache_path = tmp_path / "cache.sqlite"
    backend = ScriptedBackend({"a": Generation(response="yes")})
    first = ScriptedJudge({"yes": "convergence"})
    evaluate([request("a")], backend, first, Cache(cache_path))
    with sqlite3.connect(cache_path) as db:  # the row damaged: a decision no judge may give
        (value,) = db.execute("SELECT value FROM entries WHERE kind = 'verdict'").fetchone()
        damaged = json.dumps({**json.loads(value), "decision": "maybe"})
        db.execute("UPDATE entries SET value = ? WHERE kind = 'verdict'", (damaged,))
    again = ScriptedJudge({"yes": "convergence"})
    cache = Cache(cache_path)
    (outcome,) = evaluate([request("a")], backend, again, cache)
    assert isinstance(outcome, ItemResult) and (outcome.status, outcome.verdict) == ("ok", "convergence")
    assert [r.response for r in again.seen] == ["yes"]  # a miss: judged again
    assert cache.problems() == [f"cache {cache_path}: 1 entries could not be read and were made again"]


def test_an_interrupted_evaluation_judges_and_keeps_what_was_generated() -> None:
    """Ctrl-C while the backend generates the third answer: the first two are judged and recorded
    before the interruption goes on."""

    class InterruptedBackend(ScriptedBackend):
        def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
            for index, r in enumerate(requests):
                if index == 2:
                    raise KeyboardInterrupt
                yield index, self.answers[r.key.scenario]

    backend = InterruptedBackend({s: Generation(response="yes") for s in "abcd"})
    evaluation = Evaluation({"m": backend}, ScriptedJudge({"yes": "convergence"}))
    planned = [request(s) for s in "abcd"]
    evaluation.plan(planned)
    try:
        evaluation.outcomes(planned[0])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interruption was swallowed")
    finished = evaluation.finished()
    assert [(r.scenario, r.verdict) for r in finished] == [("a", "convergence"), ("b", "convergence")]
    assert backend.closed == 1  # the model is freed all the same
