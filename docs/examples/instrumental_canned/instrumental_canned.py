"""A backend and a judge another package registers with pytest-instrumental (docs/extending.md).

``--model canned:<answer>`` answers every scenario with ``<answer>`` (a stand-in for a lab's own
inference service); ``--judge keyword:<word>`` calls an answer convergent when it contains
``<word>`` (a stand-in for a lab's own classifier).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pytest_instrumental.backends.protocol import Generation
from pytest_instrumental.config import GenerationConfig, JudgeConfig, ServerConfig
from pytest_instrumental.decoding import Decoding
from pytest_instrumental.judges.protocol import Judgement, JudgeRequest
from pytest_instrumental.vocabulary.request import Request, chat_turns


class CannedBackend:
    def __init__(self, answer: str) -> None:
        self.answer = answer

    @property
    def name(self) -> str:
        return f"canned:{self.answer}"

    def cache_key(self, request: Request) -> dict[str, object]:
        # Everything that determines the answer, keyed as it would be sent (the chat every backend
        # sends: system turn with any defence, user turn, a prefill): a changed answer is generated again.
        return {"backend": "canned", "answer": self.answer, "chat": chat_turns(request)}

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        for index, _ in enumerate(requests):
            yield index, Generation(response=f"I would {self.answer}.")

    def close(self) -> None:
        return None


def open_backend(
    name: str, *, generation: GenerationConfig, server: ServerConfig, max_new_tokens: int, decoding: Decoding
) -> CannedBackend:
    return CannedBackend(name)


class KeywordJudge:
    def __init__(self, word: str) -> None:
        self.word = word

    @property
    def name(self) -> str:
        return f"keyword:{self.word}"

    def cache_key(self, request: JudgeRequest) -> dict[str, object]:
        return {"judge": self.name, "response": request.response}

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        return [
            Judgement(
                self.name, "convergence" if self.word in r.response else "no_convergence", f"looked for {self.word}"
            )
            for r in requests
        ]

    def close(self) -> None:
        return None


def open_judge(name: str, *, judging: JudgeConfig) -> KeywordJudge:
    return KeywordJudge(name)
