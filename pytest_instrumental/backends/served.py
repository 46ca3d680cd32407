"""A local model served by an engine this session starts (``--instrumental-engine``): the server
comes up on first use (or at configure time, so that a server that does not come up is a usage
error), generation goes through the OpenAI backend (concurrency, retries, thinking split), and
closing the backend stops the server."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from pytest_instrumental.backends.openai import OpenAIBackend, chat_payload
from pytest_instrumental.backends.protocol import Generation
from pytest_instrumental.config import EngineConfig, ServerConfig
from pytest_instrumental.decoding import Decoding
from pytest_instrumental.engines import EngineServer
from pytest_instrumental.vocabulary.request import Request

CONTINUING_ENGINES = ("vllm", "sglang")  # their chat API continues an assistant turn (continue_final_message)


def continues_answers(serving: EngineConfig) -> bool:
    """Whether an engine's server continues an assistant turn, as a prefill attack needs."""
    return serving.engine in CONTINUING_ENGINES and not serving.serve_command


class ServedBackend:
    def __init__(
        self,
        name: str,
        server: EngineServer,
        thinking: bool,
        asking: ServerConfig,
        identity: str,
        *,
        max_new_tokens: int,
        decoding: Decoding,
    ) -> None:
        self._name = name
        self.server = server
        self.thinking = thinking
        self.asking = asking  # how the server is asked (its URL comes when it is up)
        self.identity = identity  # the weights, as cache keys name them
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding
        self._client: OpenAIBackend | None = None

    @property
    def name(self) -> str:
        return self._name

    def prepare(self, generates_here: bool) -> None:
        """The server comes up now where this process generates, so one that does not is a usage
        error; under xdist each worker starts its own when its model first generates."""
        if generates_here:
            self.start()

    def start(self) -> None:
        self.server.start()

    def cache_key(self, request: Request) -> dict[str, Any]:
        # Not the URL: a server on another port next time serves the same generations.
        options = self.server.options
        return {
            "backend": "served",
            "engine": options.label,
            "engine_args": list(options.args),
            "serve_command": options.serve_command,
            "model": self.identity,
            # what the client below sends, as it sends it
            "payload": chat_payload(request, self.server.served_name, self.max_new_tokens, self.decoding),
        }

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        self.server.start()
        if self._client is None or self._client.base_urls != (self.server.base_url,):
            asking = replace(self.asking, base_urls=(self.server.base_url,))
            self._client = OpenAIBackend(
                self._name,
                self.server.served_name,
                self.thinking,
                asking,
                max_new_tokens=self.max_new_tokens,
                decoding=self.decoding,
                continues_answers=continues_answers(self.server.options),
            )
        yield from self._client.generate(requests)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.server.stop()
