"""``--judge hf:<model>``: the rubric judged by a local transformers model."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_instrumental.backends.protocol import Generation
from pytest_instrumental.backends.registry import parse_model
from pytest_instrumental.config import GenerationConfig, JudgeConfig, ServerConfig
from pytest_instrumental.judges.protocol import JudgeRequest
from pytest_instrumental.judges.transformers import TransformersJudge
from pytest_instrumental.vocabulary.request import Request
from tests.helpers import judge_request


def options(tmp_path: Path) -> GenerationConfig:
    return GenerationConfig(batch_size=4, models_dir=tmp_path)


class Answers:
    """Stands in for the judge model: answers each rubric prompt from a table."""

    name = "answers"

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.seen: list[Request] = []

    def cache_key(self, request: Request) -> dict[str, Any]:
        return {"prompt": request.steered_prompt}

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        self.seen += requests
        for index, request in enumerate(requests):
            reply = next(v for k, v in self.table.items() if k in request.steered_prompt)
            yield index, Generation(error=reply) if reply == "boom" else Generation(response=reply)

    def close(self) -> None:
        return None


def test_the_rubric_goes_in_and_strict_parsing_comes_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    judge = TransformersJudge(parse_model(str(tiny_model_dir)), options(tmp_path), ServerConfig())
    answers = Answers(
        {
            "A plan.": '{"decision":"no_convergence","reason":"plain"}',
            "Hide it.": '```json\n{"decision":"convergence","reason":"covert"}\n```',
            "Babble.": "I think it converges",
            "Crash.": "boom",
        }
    )
    judge.backend = answers
    requests = [judge_request(text, n) for n, text in enumerate(["A plan.", "Hide it.", "Babble.", "Crash."])]
    plan, hide, babble, crash = judge.judge(requests)
    assert (plan.decision, plan.reason, plan.judge) == ("no_convergence", "plain", f"hf:{tiny_model_dir.name}")
    assert hide.decision == "convergence"
    assert babble.decision is None and babble.error is not None and babble.error.startswith("unparseable answer")
    assert crash.error == "boom"
    assert answers.seen[0].context.startswith("\n        You are an AI agent specialized in detecting")
    assert answers.seen[0].steered_prompt == "TASK PROMPT:\nDo the task.\n\nMODEL RESPONSE:\nA plan."


def test_a_real_local_model_judges_and_garbage_is_a_counted_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    judge = TransformersJudge(parse_model(str(tiny_model_dir)), options(tmp_path), ServerConfig())
    (judgement,) = judge.judge([judge_request("A plan.")])
    # A random model cannot answer the rubric's JSON: that is an error, never a default verdict.
    assert judgement.decision is None and judgement.error is not None
    key = judge.cache_key(judge_request("A plan."))
    assert key is not None and key["judge"] == f"hf:{tiny_model_dir.name}"
    assert "You are an AI agent specialized" in str(key["prompt"])
    judge.close()


def test_the_judge_decodes_greedily_whatever_the_models_under_test_sample_with(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from pytest_instrumental.config import DecodingConfig

    sampling = replace(options(tmp_path), decoding=DecodingConfig(temperature=0.7, top_p=0.9, seed=3))
    judge = TransformersJudge(parse_model(str(tiny_model_dir)), sampling, ServerConfig())
    greedy = TransformersJudge(parse_model(str(tiny_model_dir)), options(tmp_path), ServerConfig())
    first, third = judge_request("A plan."), judge_request("A plan.")
    third = JudgeRequest(replace(third.request, epoch=3), third.response)
    key = judge.cache_key(first)
    assert key is not None and "seed" not in key and "decoding" not in key
    assert judge.cache_key(third) == key == greedy.cache_key(first)  # one verdict per answer, every epoch
    (judgement,) = judge.judge([first])
    (again,) = greedy.judge([first])
    assert judgement == again  # greedy: the same answer
    judge.close()
    greedy.close()


def test_the_plugin_takes_hf_judges(pytester: pytest.Pytester, reference_runs: Path, tiny_model_dir: Path) -> None:
    result = pytester.runpytest(
        "--instrumental",
        f"--instrumental-replay={reference_runs}",
        f"--judge=hf:{tiny_model_dir}",
        "-k",
        "Thinking and anti_ic and deceptive_behavior-01",
        f"--instrumental-cache-dir={pytester.path / 'cache'}",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*deceptive_behavior-01: judge error: *", "*(1 err)*"])


def test_a_local_judge_is_served_by_the_chosen_engine(tmp_path: Path, tiny_model_dir: Path) -> None:

    from pytest_instrumental.backends.served import ServedBackend
    from pytest_instrumental.config import EngineConfig
    from pytest_instrumental.engines import serve_argv
    from pytest_instrumental.judges.registry import open_judge

    serving = EngineConfig(engine="vllm", args=("--max-model-len=4096",), logs_dir=tmp_path)
    opened = open_judge(
        f"hf:{tiny_model_dir}",
        generation=options(tmp_path),
        server=ServerConfig(),
        serving=serving,
        judging=JudgeConfig(),
        recordings=None,
    )
    assert isinstance(opened.judge, TransformersJudge) and opened.judge.name == f"hf:{tiny_model_dir.name}"
    backend = opened.judge.backend
    assert isinstance(backend, ServedBackend) and backend.max_new_tokens == 120  # the judge's budget
    server = backend.server
    argv = serve_argv(server.options, server.model, server.served_name, 8000)
    assert argv[:3] == ["vllm", "serve", str(tiny_model_dir)] and argv[-1] == "--max-model-len=4096"
