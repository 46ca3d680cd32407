"""The OpenAI-compatible backend: generation through the Chat Completions API of any server
that speaks it (vLLM, llama.cpp's llama-server, Ollama, OpenAI).

Requests run concurrently up to a limit; the client (``openai_client``) retries transient
failures a bounded number of times, and what still fails becomes an error item. The API key
never leaves the client: it is in no cache key, result or message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

from pytest_instrumental.backends.protocol import EMPTY_RESPONSE, Generation, thinking_outcome
from pytest_instrumental.config import ServerConfig
from pytest_instrumental.decoding import Decoding
from pytest_instrumental.errors import InputError
from pytest_instrumental.openai_client import (
    attempts,
    display_url,
    open_client,
    preflight_failure,
    short,
)
from pytest_instrumental.vocabulary.request import Request, chat_turns

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def resolved_base_urls(base_urls: tuple[str, ...]) -> tuple[str, ...]:
    """The servers asked: those given, else $OPENAI_BASE_URL, else the OpenAI API."""
    return base_urls or (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,)


FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0  # asking again after an answer with nothing usable, as the client does
FAILURES_IN_A_ROW = 3  # requests that failed to reach a server (after retries) before it leaves the rotation


class ServerRotation:
    """The servers requests are spread over, in turn. One that stops answering (FAILURES_IN_A_ROW
    requests in a row failing with a connection error or timeout after the client's retries)
    leaves the rotation for the rest of the run: the requests still to come go to the others, or,
    with none left, fail at once instead of each waiting through its retries."""

    def __init__(self, base_urls: Sequence[str], timeout_s: float, max_retries: int) -> None:
        self.base_urls = list(base_urls)
        self._settings = (timeout_s, max_retries)
        self._clients: dict[str, Any] = {}
        self._failures: dict[str, int] = dict.fromkeys(self.base_urls, 0)
        self._down: set[str] = set()
        self._turn = 0
        self._lock = threading.Lock()

    def next(self, avoid: set[str]) -> tuple[str, Any] | None:
        """The next server in rotation that is up and not in ``avoid``, with its client."""
        with self._lock:
            for _ in range(len(self.base_urls)):
                url = self.base_urls[self._turn % len(self.base_urls)]
                self._turn += 1
                if url not in self._down and url not in avoid:
                    if url not in self._clients:
                        self._clients[url] = open_client(url, *self._settings)
                    return url, self._clients[url]
        return None

    def answered(self, url: str) -> None:
        with self._lock:
            self._failures[url] = 0

    def failed(self, url: str) -> None:
        with self._lock:
            self._failures[url] += 1
            if self._failures[url] >= FAILURES_IN_A_ROW:
                self._down.add(url)

    @property
    def down(self) -> set[str]:
        with self._lock:
            return set(self._down)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class OpenAIBackend:
    def __init__(
        self,
        name: str,
        served_model: str,
        thinking: bool,
        server: ServerConfig,
        *,
        max_new_tokens: int,
        decoding: Decoding | None = None,
        continues_answers: bool = False,
    ) -> None:
        """``continues_answers``: the server continues an assistant turn (vLLM and SGLang take
        ``continue_final_message``), so a prefill attack can run on it."""
        self._name = name
        self.continues_answers = continues_answers
        self.served_model = served_model
        self.thinking = thinking
        self.server = server
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding or Decoding()
        self.base_urls = resolved_base_urls(server.base_urls)
        self._servers = ServerRotation(self.base_urls, server.timeout_s, server.max_retries)

    @property
    def name(self) -> str:
        return self._name

    @property
    def endpoint(self) -> str:
        urls = [display_url(u) for u in self.base_urls]
        return urls[0] if len(urls) == 1 else f"{len(urls)} servers ({', '.join(urls)})"

    def payload(self, request: Request) -> dict[str, Any]:
        """The Chat Completions call's arguments for ``request``: what is sent, and what is keyed."""
        return chat_payload(request, self.served_model, self.max_new_tokens, self.decoding)

    def cache_key(self, request: Request) -> dict[str, Any]:
        # Servers in one rotation serve the same model: whichever answered, the key is the same.
        urls = self.base_urls
        return {
            "backend": "openai-chat",
            "base_url": display_url(urls[0]) if len(urls) == 1 else sorted(display_url(u) for u in urls),
            "payload": self.payload(request),
        }

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        pool = ThreadPoolExecutor(max_workers=self.server.concurrency, thread_name_prefix="instrumental-request")
        try:
            futures: dict[Future[Generation], int] = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # On Ctrl-C (or a consumer that stops early) the queued requests are dropped at once,
            # not sent one by one while the session waits.
            pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, request: Request) -> Generation:
        """The request on the next server in rotation; on one that stopped answering, on the next."""

        tried: set[str] = set()
        while (server := self._servers.next(avoid=tried)) is not None:
            url, client = server
            tried.add(url)
            generation = self._ask(client, request)
            if generation is not None:
                self._servers.answered(url)
                return generation
            self._servers.failed(url)
        where = ", ".join(display_url(u) for u in self.base_urls)
        if tried - self._servers.down:  # it failed here, but the server is not written off (yet)
            return Generation(error=f"request failed{self._retried()}: {where} did not answer")
        if len(self.base_urls) == 1:
            return Generation(
                error=f"not sent: {where} stopped answering ({FAILURES_IN_A_ROW} requests in a row failed)"
            )
        return Generation(error=f"not sent: every server stopped answering ({where})")

    def _ask(self, client: Any, request: Request) -> Generation | None:
        """The server's answer as a Generation; None when the server does not answer at all. The
        client retries what fails in transport or with a retryable status; an answer that came but
        holds nothing usable (not a completion, no content) is asked again here, as many times."""
        retries = self.server.max_retries
        for attempt in range(retries + 1):
            generation, usable = self._ask_once(client, request)
            if usable or attempt == retries:
                if not usable and retries and generation is not None:
                    return replace(generation, error=f"{generation.error} (after {retries} retries)")
                return generation
            time.sleep(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**attempt))
        raise AssertionError("unreachable: the last attempt returns")

    def _ask_once(self, client: Any, request: Request) -> tuple[Generation | None, bool]:
        """One call (with the client's own retries): the outcome, and whether it is final (False:
        an answer with nothing usable in it, worth asking again)."""
        import openai

        if request.prefill is not None and not self.continues_answers:
            return Generation(error=f"{self.name}'s server cannot continue an assistant turn (a prefill)"), True
        attempts(reset=True)
        try:
            completion = client.chat.completions.create(**self.payload(request))
            choice = completion.choices[0]
            # the judge sees the whole answer: the attacker's start, then the model's continuation
            content = (request.prefill or "") + (choice.message.content or "")
        except openai.APIStatusError as exc:
            return Generation(error=f"request failed{self._retried(exc)}: {short(exc.message)}"), True
        except (openai.APITimeoutError, openai.APIConnectionError):
            return None, True
        except openai.APIError as exc:
            return Generation(error=f"{type(exc).__name__}: {short(str(exc))}"), True
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            return Generation(error=f"malformed completion: {type(exc).__name__}: {short(str(exc))}"), False
        reasoning = getattr(choice.message, "reasoning_content", None)
        hit_limit = choice.finish_reason == "length"
        if reasoning:  # the server split the reasoning off itself
            if not content.strip():
                error = "hit the token limit in the reasoning" if hit_limit else "empty response"
                return Generation(thinking=str(reasoning), truncated=hit_limit, error=error), hit_limit
            return Generation(response=content.strip(), thinking=str(reasoning), truncated=hit_limit), True
        generation = thinking_outcome(content, hit_limit, self.thinking)
        return generation, generation.error != EMPTY_RESPONSE

    def _retried(self, failure: Any = None) -> str:
        """How often this thread's failed call was really sent again, and why not when a server
        asked for a wait too long to honour."""
        sent = attempts()
        said = f" after {sent - 1} retries" if sent > 1 else ""
        response = getattr(failure, "response", None)
        wait = response.headers.get("retry-after") if response is not None else None
        if wait is not None and sent <= self.server.max_retries:
            said += f" (not retried: the server asked to wait {short(wait, 20)} s)"
        return said

    def prepare(self, generates_here: bool) -> None:
        self.preflight()

    def preflight(self, timeout_s: float = 10.0) -> None:
        """One quick call to each server before any work: a server that cannot be reached, a wrong
        base URL, a rejected key or a model the server does not serve ends the session now, in
        seconds, instead of every item failing after its retries."""
        for url in self.base_urls:
            self._preflight(url, timeout_s)

    def _preflight(self, url: str, timeout_s: float) -> None:
        where = display_url(url)
        client = open_client(url, timeout_s, max_retries=0)
        try:
            served = [m.id for m in client.models.list()]
        except Exception as exc:
            failure = preflight_failure(exc, where)
            if failure is None:
                raise
            raise InputError(f"--model {self.name}: {failure}") from None
        finally:
            client.close()
        if served and self.served_model not in served:
            raise InputError(
                f"--model {self.name}: {where} does not serve {self.served_model!r}; it serves {', '.join(served[:10])}"
            )

    def close(self) -> None:
        self._servers.close()


def chat_payload(request: Request, served_model: str, max_tokens: int, decoding: Decoding) -> dict[str, Any]:
    """What an OpenAI-compatible server is sent for ``request`` (``chat.completions.create``'s
    arguments): the chat (request.chat_turns), the budget and the decoding; with a prefill, the
    flags that make vLLM and SGLang continue the final assistant turn. Every backend over such a
    server sends this and keys its cache on it, so a key cannot differ from what is sent."""
    payload: dict[str, Any] = {
        "model": served_model,
        "messages": chat_turns(request),
        "max_tokens": max_tokens,
        **sampling_parameters(decoding, request),
    }
    if request.prefill is not None:
        continuing = {"continue_final_message": True, "add_generation_prompt": False}
        payload["extra_body"] = {**payload.get("extra_body", {}), **continuing}
    return payload


def sampling_parameters(decoding: Decoding, request: Request) -> dict[str, Any]:
    """Chat Completions parameters: temperature 0 when greedy; else the temperature, top-p and the
    epoch's seed, and top-k as an extra field (vLLM and SGLang read it; OpenAI has none)."""
    if decoding.greedy:
        return {"temperature": 0}
    parameters: dict[str, Any] = {
        "temperature": decoding.temperature,
        "seed": decoding.epoch_seed(request.key, request.epoch),
    }
    if decoding.top_p is not None:
        parameters["top_p"] = decoding.top_p
    if decoding.top_k is not None:
        parameters["extra_body"] = {"top_k": decoding.top_k}
    return parameters
