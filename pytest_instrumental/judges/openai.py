"""The paper's judge over OpenAI APIs: the rubric, sent as the reference implementation did.

Against the OpenAI API itself it calls the Responses API (reasoning effort "none",
temperature 0, max_output_tokens 120), as the paper did with gpt-5.2. With a base URL (a local
vLLM or llama-server model) it calls Chat Completions with the same messages. Calls run
concurrently; the client (``openai_client``) retries transient failures a bounded number of
times. An answer that does not parse is asked once more, then it is a judge error. The key never
leaves the client.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_instrumental.config import JudgeConfig
from pytest_instrumental.errors import InputError
from pytest_instrumental.judges.protocol import Judgement, JudgeRequest
from pytest_instrumental.judges.rubric import Rubric, judged_with_one_retry
from pytest_instrumental.openai_client import MalformedReply, display_url, open_client, preflight_failure
from pytest_instrumental.text import redact
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request, chat_messages

MAX_OUTPUT_TOKENS = 120
PAPER_JUDGE_MODEL = "gpt-5.2"


class OpenAIJudge:
    def __init__(self, model: str, settings: JudgeConfig, rubric: Rubric | None = None) -> None:
        self.model = model
        self.settings = settings
        self.rubric = rubric or Rubric()
        self.base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL")
        # The paper's call shape on OpenAI's own API; Chat Completions for any other server.
        self.api = "responses" if self.base_url is None else "chat"
        self._client: Any = None

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def endpoint(self) -> str:
        return "OpenAI's API" if self.base_url is None else display_url(self.base_url)

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.base_url is None and not os.environ.get("OPENAI_API_KEY"):
                raise InputError(f"--judge {self.name} needs OPENAI_API_KEY (or a base URL for a local server)")
            self._client = open_client(self.base_url, self.settings.timeout_s, self.settings.max_retries)
        return self._client

    def cache_key(self, request: JudgeRequest) -> dict[str, object]:
        return {
            "judge": self.name,
            "api": self.api,
            "base_url": None if self.base_url is None else display_url(self.base_url),
            "rubric": self.rubric.sha256,
            "settings": {"temperature": 0, "max_output_tokens": MAX_OUTPUT_TOKENS, "reasoning_effort": "none"},
            "context": request.request.context.strip(),
            "prompt": request.request.steered_prompt,
            "response": request.response,
        }

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: JudgeRequest) -> Judgement:
        import openai

        system = self.rubric.system(request.request.context)
        user = self.rubric.user(request.request.steered_prompt, request.response)
        try:
            return judged_with_one_retry(self.name, lambda: self._ask(system, user))
        except openai.APIStatusError as exc:
            return Judgement(judge=self.name, error=redact(f"HTTP {exc.status_code}: {exc.message}"))
        except openai.APIError as exc:
            return Judgement(judge=self.name, error=redact(f"{type(exc).__name__}: {exc}"))
        except MalformedReply as exc:
            return Judgement(judge=self.name, error=redact(f"malformed reply: {exc}"))

    def _ask(self, system: str, user: str) -> str:
        """The judge's answer; MalformedReply when the server's reply holds none."""
        try:
            return self._answer(system, user)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:  # a 200 not JSON, or without the fields
            raise MalformedReply(f"{type(exc).__name__}: {exc}") from None

    def _answer(self, system: str, user: str) -> str:
        messages = chat_messages(system, user)
        if self.api == "responses":
            reply = self.client.responses.create(
                model=self.model,
                input=messages,
                reasoning={"effort": "none"},
                temperature=0,
                max_output_tokens=MAX_OUTPUT_TOKENS,
            )
            return str(reply.output_text)
        completion = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0, max_tokens=MAX_OUTPUT_TOKENS
        )
        return str(completion.choices[0].message.content or "")

    def prepare(self, generates_here: bool) -> None:
        self.preflight()

    def preflight(self) -> None:
        """One real judge call before any model loads: a missing or rejected key, or an endpoint
        that does not answer, ends the session now with one line, not after an hour of work."""

        probe = JudgeRequest(
            Request(ItemKey("preflight", "baseline", "preflight-01"), "preflight", "Preflight.", "Say hello."),
            "Hello.",
        )
        system = self.rubric.system(probe.request.context)
        user = self.rubric.user(probe.request.steered_prompt, probe.response)
        where = "the OpenAI API" if self.base_url is None else display_url(self.base_url)
        try:
            self._ask(system, user)
        except Exception as exc:
            failure = preflight_failure(exc, where)
            if failure is None:
                raise
            raise InputError(f"--judge {self.name}: {failure}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
