"""The OpenAI-compatible backend against a real local HTTP server that injects faults."""

import json
from pathlib import Path

import pytest

from pytest_instrumental.backends.openai import OpenAIBackend
from pytest_instrumental.cache import Cache
from pytest_instrumental.config import ServerConfig
from pytest_instrumental.evaluation import generate_all
from tests.chat_server import API_KEY, ChatServer, running_chat_server
from tests.helpers import request

SECRET = API_KEY


def backend(server: ChatServer, thinking: bool = False) -> OpenAIBackend:
    asking = ServerConfig(base_urls=(server.base_url,), concurrency=4, timeout_s=1.0, max_retries=2)
    return OpenAIBackend("openai:local", "local", thinking, asking, max_new_tokens=64)


def test_every_item_ends_ok_or_as_a_counted_error_none_lost(server: ChatServer) -> None:
    prompts = ["plain", "FAULT:429", "FAULT:500", "FAULT:SLOW", "FAULT:MALFORMED", "FAULT:REASONING", "FAULT:EMPTY"]
    requests = [request(p, n) for n, p in enumerate(prompts, start=1)]
    results = dict(backend(server).generate(requests))
    assert sorted(results) == list(range(len(prompts)))
    by_prompt = {p: results[i] for i, p in enumerate(prompts)}
    assert by_prompt["plain"].response == "Answer to: plain"
    assert by_prompt["FAULT:429"].response == "Answer to: FAULT:429"  # retried past two 429s
    assert server.attempts["FAULT:429"] == 3
    assert by_prompt["FAULT:500"].error == "request failed after 2 retries: Error code: 500 - internal error"
    assert server.attempts["FAULT:500"] == 3  # first try and two retries, then it stops
    assert by_prompt["FAULT:SLOW"].response == "Answer to: FAULT:SLOW"  # timed out once, retried
    malformed = by_prompt["FAULT:MALFORMED"]
    assert malformed.response is None and (malformed.error or "").endswith("(after 2 retries)")
    assert server.attempts["FAULT:MALFORMED"] == 3  # an answer with nothing usable is asked again
    assert by_prompt["FAULT:REASONING"].thinking == "weighing the options"
    assert by_prompt["FAULT:REASONING"].response == "Answer to: FAULT:REASONING"
    assert by_prompt["FAULT:EMPTY"].error == "empty response (after 2 retries)"
    assert server.attempts["FAULT:EMPTY"] == 3
    assert all(SECRET not in (g.error or "") for g in results.values())


def test_a_wait_too_long_to_honour_is_said_not_counted_as_retries(server: ChatServer) -> None:
    (generation,) = dict(backend(server).generate([request("FAULT:WAIT")])).values()
    assert server.attempts["FAULT:WAIT"] == 1
    assert generation.error == (
        "request failed (not retried: the server asked to wait 3600 s): Error code: 429 - come back in an hour"
    )


@pytest.mark.parametrize("fault", ["FAULT:DRIP", "FAULT:DRIPHEAD"])
def test_the_timeout_bounds_a_whole_answer_however_slowly_it_drips(server: ChatServer, fault: str) -> None:
    import time

    settings = ServerConfig(base_urls=(server.base_url,), concurrency=1, timeout_s=1.5, max_retries=0)
    started = time.monotonic()
    (generation,) = dict(
        OpenAIBackend("openai:local", "local", False, settings, max_new_tokens=8).generate([request("FAULT:DRIP")])
    ).values()
    assert time.monotonic() - started < 10  # the body alone would take 40 s, each byte well within 1.5 s
    assert generation.error is not None and generation.response is None


def test_inline_think_tags_are_split_and_a_cut_reasoning_is_truncated(server: ChatServer) -> None:
    results = dict(backend(server, thinking=True).generate([request("FAULT:THINKTAGS"), request("FAULT:LENGTH")]))
    assert (results[0].thinking, results[0].response) == ("weighing", "The answer.")
    assert results[1].truncated  # finish_reason "length"


def test_the_key_goes_to_the_server_but_never_into_the_cache(server: ChatServer, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.sqlite")
    chat = backend(server)
    generate_all([request("plain"), request("FAULT:500", 2)], chat, cache)
    assert f"Bearer {SECRET}" in server.authorizations
    cache.close()
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes()
    assert SECRET not in json.dumps(chat.cache_key(request("plain")))
    rerun = generate_all([request("plain")], chat, Cache(tmp_path / "cache.sqlite"))
    assert rerun[0].response == "Answer to: plain" and server.attempts["plain"] == 1  # served by the cache


def test_requests_spread_over_several_servers_and_one_that_dies_leaves_the_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with running_chat_server() as first, running_chat_server() as second:
        settings = ServerConfig(
            base_urls=(first.base_url, second.base_url), concurrency=4, timeout_s=1.0, max_retries=1
        )
        spread = OpenAIBackend("openai:local", "local", False, settings, max_new_tokens=64)
        answers = dict(spread.generate([request(f"spread {n}", n) for n in range(8)]))
        assert all(a.response for a in answers.values())
        assert sum(first.attempts.values()) == sum(second.attempts.values()) == 4  # in turn
        second.shutdown()
        second.server_close()  # the second server dies
        answers = dict(spread.generate([request(f"after {n}", n) for n in range(8)]))
        assert all(a.response and a.error is None for a in answers.values())  # nothing lost
        assert sum(1 for p in first.attempts if p.startswith("after")) == 8
        spread.close()
    with running_chat_server() as only:
        url = only.base_url
    both = ServerConfig(base_urls=(url, url.replace("/v1", "/w")), concurrency=1, timeout_s=1.0, max_retries=0)
    gone = OpenAIBackend("openai:local", "local", False, both, max_new_tokens=64)
    generated = dict(gone.generate([request(f"anyone? {n}", n) for n in range(8)]))
    in_order = [generated[n] for n in range(8)]
    assert all(g.error for g in in_order)  # every item still ends, as a counted error
    assert in_order[0].error == f"request failed: {url}, {url.replace('/v1', '/w')} did not answer"
    assert in_order[-1].error == f"not sent: every server stopped answering ({url}, {url.replace('/v1', '/w')})"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://host:8000/v1", "http://host:8000/v1"),
        ("http://alice:pw@host/v1", "http://host/v1"),
        ("https://host/v1?api_key=sk-abc", "https://host/v1?<redacted>"),
        ("https://bob:pw@host/v1?api-version=2024-06-01", "https://host/v1?<redacted>"),
    ],
)
def test_a_url_is_shown_without_its_credentials_or_query_string(url: str, shown: str) -> None:
    from pytest_instrumental.openai_client import display_url

    assert display_url(url) == shown
