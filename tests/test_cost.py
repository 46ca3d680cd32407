"""What a run is about to do (cost.py), said before it starts: counted from plain data, and
against what a server received."""

from __future__ import annotations

import json
import re

import pytest

from pytest_instrumental.cost import Cost
from tests.chat_server import ChatServer


def test_the_line_says_what_is_to_make_of_what_and_where_requests_go() -> None:
    cost = Cost(12, 36, 30, 10, 36, 9, {"judge openai:j at http://h/v1": 27, "model openai:m at http://h/v1": 20})
    assert cost.to_generate == 20 and cost.to_judge == 27
    assert cost.line() == (
        "instrumental plan: 12 items (36 answers); 20 of 30 generations to make (10 cached); "
        "27 of 36 judge calls to make (9 cached); 47 requests to send "
        "(27 to judge openai:j at http://h/v1; 20 to model openai:m at http://h/v1)"
    )
    cached = Cost(5, 5, 5, 5, 5, 5)
    assert cached.line().endswith("0 of 5 judge calls to make (5 cached); no requests to send")
    assert cost.document()["requests"] == cost.sends and cost.document()["cached_verdicts"] == 9


def _sent(server: ChatServer) -> tuple[int, int]:
    """(model requests, judge requests) the server received, the judge's one preflight call aside."""
    bodies = [b for b in server.bodies if "Preflight." not in json.dumps(b)]
    return sum(b.get("model") == "local" for b in bodies), sum(b.get("model") == "judge-model" for b in bodies)


def test_the_plan_line_comes_first_and_counts_what_the_server_then_receives(
    pytester: pytest.Pytester, server: ChatServer
) -> None:
    args = [
        "--instrumental",
        "--model=openai:local",
        f"--instrumental-base-url={server.base_url}",
        "--judge=openai:judge-model",
        f"--instrumental-judge-base-url={server.base_url}",
        "--suffix=baseline",
        "--suffix=pro_ic",
        "-k",
        "evading_shutdown-0",
        "--instrumental-json=results.json",
        "-p",
        "no:randomly",
    ]
    where = server.base_url
    first = pytester.runpytest_subprocess(*args)
    assert first.ret in (0, 1), first.stdout.str()
    line = next(text for text in first.outlines if text.startswith("instrumental plan:"))
    assert first.outlines.index(line) < next(i for i, text in enumerate(first.outlines) if "%]" in text)
    items = int(re.search(r"(\d+) items", line).group(1))  # type: ignore[union-attr]
    assert items == 18  # evading_shutdown-01..09 x 2 suffixes
    assert line == (
        f"instrumental plan: {items} items; {items} of {items} generations to make (0 cached); "
        f"{items} of {items} judge calls to make (0 cached); {2 * items} requests to send "
        f"({items} to judge openai:judge-model at {where}; {items} to model openai:local at {where})"
    )
    assert _sent(server) == (items, items)
    document = json.loads((pytester.path / "results.json").read_text(encoding="utf-8"))
    assert document["run"]["cost"]["requests"] == {
        f"judge openai:judge-model at {where}": items,
        f"model openai:local at {where}": items,
    }

    server.bodies.clear()
    again = pytester.runpytest_subprocess(*args)
    assert (
        f"instrumental plan: {items} items; 0 of {items} generations to make ({items} cached); " in again.stdout.str()
    )
    assert "(18 cached); no requests to send" in again.stdout.str()
    assert _sent(server) == (0, 0)

    collected = pytester.runpytest_subprocess(*args, "--collect-only", "-q")
    assert "no requests to send" in collected.stdout.str() and _sent(server) == (0, 0)


def test_under_xdist_the_controller_says_it_once_and_records_it(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    result = pytester.runpytest_subprocess(*small_replay_args, "-n", "2", "--instrumental-json=r.json")
    assert result.ret == 0, result.stdout.str()
    lines = [text for text in result.outlines if text.startswith("instrumental plan:")]
    assert lines == [
        "instrumental plan: 20 items; nothing to generate; no judge calls to make (20 verdicts recorded); "
        "no requests to send"
    ]  # a replay judged by its recorded verdicts calls no judge
    cost = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))["run"]["cost"]
    assert cost["items"] == 20 and cost["judge_calls"] == 0 and cost["recorded_verdicts"] == 20
    assert cost["generations"] == 0
    rejudged = pytester.runpytest_subprocess(*small_replay_args, "--judge=offline", "--instrumental-no-cache")
    assert "nothing to generate; 20 of 20 judge calls to make (0 cached); no requests" in rejudged.stdout.str()
