"""``--judge hf:<model>``: the paper's rubric, judged by a local transformers model.

The rubric's system and user messages go through the same transformers backend as the models
under test (chat template, batching, ``</think>`` split) with the judge's own settings: greedy
decoding and a budget of 120 new tokens, whatever the models under test sample with, and no
activation steering. Greedy decoding answers the same twice, so an answer that does not
parse is a judge error at once, not asked again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pytest_instrumental.backends.protocol import Prepares
from pytest_instrumental.backends.registry import ModelSpec, open_backend
from pytest_instrumental.config import DecodingConfig, EngineConfig, GenerationConfig, ServerConfig
from pytest_instrumental.judges.openai import MAX_OUTPUT_TOKENS
from pytest_instrumental.judges.protocol import Judgement, JudgeRequest
from pytest_instrumental.judges.rubric import JudgeAnswerError, Rubric, parse_judgement
from pytest_instrumental.vocabulary.request import Request

HF_PREFIX = "hf:"


class TransformersJudge:
    def __init__(
        self,
        spec: ModelSpec,
        generation: GenerationConfig,
        server: ServerConfig,
        serving: EngineConfig | None = None,
        rubric: Rubric | None = None,
    ) -> None:
        """Served like the models under test (in this process or an engine server), with the
        judge's own budget and greedy decoding."""
        self.rubric = rubric or Rubric()
        self._name = f"{HF_PREFIX}{spec.name}"
        judging = dataclasses.replace(generation, max_new_tokens=MAX_OUTPUT_TOKENS, decoding=DecodingConfig())
        self.backend = open_backend(spec, judging, server, serving)

    @property
    def name(self) -> str:
        return self._name

    def prepare(self, generates_here: bool) -> None:
        """Its backend's preparation (an engine server, when the judge is served by one)."""
        if isinstance(self.backend, Prepares):
            self.backend.prepare(generates_here)

    def _as_generation(self, request: JudgeRequest) -> Request:
        original = request.request
        return Request(
            key=original.key,
            category=original.category,
            context=self.rubric.system(original.context),
            prompt=self.rubric.user(original.steered_prompt, request.response),  # sent as it is: no condition
        )

    def cache_key(self, request: JudgeRequest) -> dict[str, object] | None:
        # The backend's key holds the model, its settings and the rendered rubric prompt.
        generation_key = self.backend.cache_key(self._as_generation(request))
        return None if generation_key is None else {"judge": self.name, **generation_key}

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        answers = dict(self.backend.generate([self._as_generation(r) for r in requests]))
        judgements = []
        for index in range(len(requests)):
            answer = answers.get(index)
            if answer is None or answer.response is None:
                error = answer.error if answer is not None and answer.error else "the judge model gave no answer"
                judgements.append(Judgement(judge=self.name, error=error))
                continue
            try:
                decision, reason = parse_judgement(answer.response)
            except JudgeAnswerError as exc:
                judgements.append(Judgement(judge=self.name, error=f"unparseable answer: {exc}"))
                continue
            judgements.append(Judgement(judge=self.name, decision=decision, reason=reason))
        return judgements

    def close(self) -> None:
        self.backend.close()
