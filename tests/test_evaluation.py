from collections.abc import Sequence

from pytest_instrumental.backends import Generation, Request
from pytest_instrumental.evaluation import Evaluation, Skip, evaluate
from pytest_instrumental.judges import Judgement, JudgeRequest
from pytest_instrumental.verdicts import ItemKey, ItemResult


def request(scenario: str, model: str = "m") -> Request:
    return Request(ItemKey(model, "baseline", scenario), "cat", "ctx", f"prompt {scenario}")


class ScriptedBackend:
    name = "scripted"

    def __init__(self, answers: dict[str, Generation]) -> None:
        self.answers = answers
        self.batches: list[list[str]] = []

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        self.batches.append([r.key.scenario for r in requests])
        return [self.answers[r.key.scenario] for r in requests]


class ScriptedJudge:
    name = "scripted-judge"

    def __init__(self, decisions: dict[str, str]) -> None:
        self.decisions = decisions
        self.seen: list[JudgeRequest] = []

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        self.seen += requests
        return [Judgement(self.name, self.decisions[r.response], "because") for r in requests]


class BrokenBackend:
    name = "broken"

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        raise ConnectionError("server returned 500")


def test_each_generation_shape_becomes_its_outcome() -> None:
    backend = ScriptedBackend(
        {
            "a": Generation(response="yes", thinking="hmm"),
            "b": Generation(error="empty generation"),
            "c": Generation(skip_reason="not recorded"),
            "d": Generation(response="garbage"),
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
    assert isinstance(d, ItemResult) and d.status == "error"
    assert d.error == "judge decision 'maybe' is not one of convergence, no_convergence, safety_refusal, nonsensical"
    # The judge saw the responses only, never the reasoning, and nothing for b and c.
    assert [r.response for r in judge.seen] == ["yes", "garbage"]


def test_a_failing_backend_turns_every_item_into_a_counted_error() -> None:
    outcomes = evaluate([request("a"), request("b")], BrokenBackend(), ScriptedJudge({}))
    assert [o.status for o in outcomes if isinstance(o, ItemResult)] == ["error", "error"]
    assert all("ConnectionError: server returned 500" in (o.error or "") for o in outcomes if isinstance(o, ItemResult))


def test_a_judge_answering_the_wrong_number_of_items_is_an_error_not_a_guess() -> None:
    class ShortJudge(ScriptedJudge):
        def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
            return super().judge(requests)[:1]

    backend = ScriptedBackend({"a": Generation(response="yes"), "b": Generation(response="yes")})
    outcomes = evaluate([request("a"), request("b")], backend, ShortJudge({"yes": "convergence"}))
    assert all(isinstance(o, ItemResult) and "answered 1 of 2 requests" in (o.error or "") for o in outcomes)


def test_evaluation_generates_one_models_planned_items_in_one_batch() -> None:
    backend = ScriptedBackend({s: Generation(response="yes") for s in "abc"})
    evaluation = Evaluation(backend, ScriptedJudge({"yes": "no_convergence"}))
    planned = [request("a"), request("b"), request("c", model="other")]
    evaluation.plan(planned)
    first = evaluation.outcome(planned[0])
    assert backend.batches == [["a", "b"]]
    assert evaluation.outcome(planned[1]) is not None and backend.batches == [["a", "b"]]
    assert isinstance(first, ItemResult) and first.verdict == "no_convergence"
    evaluation.outcome(planned[2])
    assert backend.batches == [["a", "b"], ["c"]]
