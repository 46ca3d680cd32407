"""The OpenAI-compatible backend: generation through the Chat Completions API of any server
that speaks it (vLLM, llama.cpp's llama-server, Ollama, OpenAI).

Requests run concurrently up to a limit; the client (``openai_client``) retries transient
failures a bounded number of times, and what still fails becomes an error item. The API key
never leaves the client: it is in no cache key, result or message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pytest_instrumental.backends.protocol import Generation, Request, thinking_outcome
from pytest_instrumental.errors import InputError
from pytest_instrumental.openai_client import chat_messages, open_client
from pytest_instrumental.redact import redact

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class OpenAISettings:
    max_new_tokens: int
    base_url: str | None  # None: OPENAI_BASE_URL, else the OpenAI API
    concurrency: int
    timeout_s: float
    max_retries: int

    def resolved_base_url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


class OpenAIBackend:
    def __init__(self, name: str, served_model: str, thinking: bool, settings: OpenAISettings) -> None:
        self._name = name
        self.served_model = served_model
        self.thinking = thinking
        self.settings = settings
        self.base_url = settings.resolved_base_url()
        self._client: Any = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = open_client(self.base_url, self.settings.timeout_s, self.settings.max_retries)
        return self._client

    def messages(self, request: Request) -> list[dict[str, str]]:
        return chat_messages(request.context.strip(), request.steered_prompt)

    def cache_key(self, request: Request) -> dict[str, Any]:
        return {
            "backend": "openai-chat",
            "base_url": self.base_url,
            "model": self.served_model,
            "settings": {"max_tokens": self.settings.max_new_tokens, "temperature": 0},
            "messages": self.messages(request),
        }

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="instrumental-request")
        try:
            futures: dict[Future[Generation], int] = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # On Ctrl-C (or a consumer that stops early) the queued requests are dropped at once,
            # not sent one by one while the session waits.
            pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, request: Request) -> Generation:
        import openai

        try:
            completion = self.client.chat.completions.create(
                model=self.served_model,
                messages=self.messages(request),
                temperature=0,
                max_tokens=self.settings.max_new_tokens,
            )
            choice = completion.choices[0]
            content = choice.message.content or ""
        except openai.APIStatusError as exc:
            return Generation(error=f"request failed{self._retried(exc.status_code)}: {_short(exc.message)}")
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            return Generation(error=f"request failed{self._retried(None)}: {_short(str(exc))}")
        except openai.APIError as exc:
            return Generation(error=f"{type(exc).__name__}: {_short(str(exc))}")
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            return Generation(error=f"malformed completion: {type(exc).__name__}: {_short(str(exc))}")
        reasoning = getattr(choice.message, "reasoning_content", None)
        hit_limit = choice.finish_reason == "length"
        if reasoning:  # the server split the reasoning off itself
            if not content.strip():
                error = "hit the token limit in the reasoning" if hit_limit else "empty response"
                return Generation(thinking=str(reasoning), truncated=hit_limit, error=error)
            return Generation(response=content.strip(), thinking=str(reasoning), truncated=hit_limit)
        return thinking_outcome(content, hit_limit, self.thinking)

    def _retried(self, status: int | None) -> str:
        """Which failures the client retried: timeouts, connection errors, 408, 409, 429, 5xx."""
        retried = status is None or status in (408, 409, 429) or status >= 500
        return f" after {self.settings.max_retries} retries" if retried else ""

    def preflight(self, timeout_s: float = 10.0) -> None:
        """One quick call before any work: a server that cannot be reached, a wrong base URL, a
        rejected key or a model the server does not serve ends the session now, in seconds,
        instead of every item failing after its retries."""
        import openai

        where = display_url(self.base_url)
        client = open_client(self.base_url, timeout_s, max_retries=0)
        try:
            served = [m.id for m in client.models.list()]
        except openai.AuthenticationError:
            raise InputError(f"--model {self.name}: {where} rejected the API key") from None
        except openai.APIConnectionError as exc:
            raise InputError(
                f"--model {self.name}: cannot reach {where} ({_short(str(exc.__cause__ or exc))})"
            ) from None
        except openai.APIStatusError as exc:
            hint = " (is the base URL right? it usually ends in /v1)" if exc.status_code == 404 else ""
            raise InputError(f"--model {self.name}: {where} answered HTTP {exc.status_code}{hint}") from None
        finally:
            client.close()
        if served and self.served_model not in served:
            raise InputError(
                f"--model {self.name}: {where} does not serve {self.served_model!r}; it serves {', '.join(served[:10])}"
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def display_url(url: str) -> str:
    """The URL without credentials (``user:password@``), fit for messages and results."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
