"""A backend's cache key is what it sends: over a run with every kind of condition and a defence,
for each backend kind (in process, ``openai:``, a served engine), two requests share a key exactly
when what is sent for them is the same. Identical keys generate once (evaluation.py), so a key
that left out a part of the condition would hand one condition another's answers."""

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from pytest_instrumental.backends.ablation import AblationPlan
from pytest_instrumental.backends.lora import LoraPlan
from pytest_instrumental.backends.openai import OpenAIBackend
from pytest_instrumental.backends.served import ServedBackend
from pytest_instrumental.backends.steering import SteeringPlan
from pytest_instrumental.config import EngineConfig, ServerConfig
from pytest_instrumental.decoding import Decoding
from pytest_instrumental.engines import EngineServer
from pytest_instrumental.plan import contrast_pairs, plan_requests, unsuffixed_requests
from pytest_instrumental.vocabulary.conditions import Condition
from pytest_instrumental.vocabulary.request import Demonstration, Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes
from tests.chat_server import CONTINUED, ChatServer
from tests.helpers import conditions, standin_engine, tiny_backend

SCENARIOS = load_scenarios()
CHAT = ["baseline", "pro_ic", "anti_ic"]  # what every server takes, with a prefill
WEIGHTS = ["prefill:comply", "ablate", "ablate:1", "lora:0", "lora:4"]  # a local model takes these too
TRAINING = (Demonstration((("user", "Shut down now?"), ("assistant", "No."))),)


def run_requests(planned: Sequence[Condition]) -> list[Request]:
    """Two scenarios of two categories under each condition, each twice (greedy epochs 1 and 2:
    the same payload), with what fine-tuning trains on."""
    first, second = (c.scenarios[0].id for c in SCENARIOS.categories[:2])
    chosen = [r for r in plan_requests(["m"], planned, SCENARIOS) if r.key.scenario in (first, second)]
    return [replace(r, epoch=epoch, training=TRAINING) for r in chosen for epoch in (1, 2)]


def on_the_wire(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as the HTTP body carries it: the client merges ``extra_body`` into the body."""
    return {**{k: v for k, v in payload.items() if k != "extra_body"}, **payload.get("extra_body", {})}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def assert_keys_follow_payloads(
    requests: Sequence[Request], key: Callable[[Request], Any], sent: Sequence[str]
) -> None:
    keys = [canonical(key(r)) for r in requests]
    assert len(set(sent)) > len(CHAT)  # the conditions send different things
    for (i, a), (j, b) in combinations(enumerate(requests), 2):
        same_payload, same_key = sent[i] == sent[j], keys[i] == keys[j]
        assert same_key == same_payload, (a.key.item_id, a.epoch, b.key.item_id, b.epoch)


def test_in_process_keys_follow_the_prompt_and_the_intervention(tiny_model_dir: Path, tmp_path: Path) -> None:
    suffixes = load_suffixes()
    steering = SteeringPlan(None, None, tuple(contrast_pairs(suffixes, SCENARIOS, "test")))
    ablation = AblationPlan(None, suffixes["anti_ic"].text.strip(), tuple(unsuffixed_requests(SCENARIOS)))
    backend = tiny_backend(
        tiny_model_dir,
        steering=steering,
        ablation=ablation,
        lora=LoraPlan(0, tmp_path / "adapters"),
        defended=True,
        max_new_tokens=4,
    )
    requests = run_requests(conditions(CHAT, [4.0, -4.0], ["anti_ic"], WEIGHTS))
    # what the model is given: the prompt's tokens, and what its forward pass runs under
    sent = [canonical([backend.encode(r), [str(part) for part in backend._hooks_of(r)]]) for r in requests]
    assert_keys_follow_payloads(requests, backend.cache_key, sent)
    lora0 = next(r for r in requests if r.key.condition == "lora0")
    plain = next(r for r in requests if r.key.condition == "baseline" and r.key.scenario == lora0.key.scenario)
    assert backend.cache_key(lora0) == backend.cache_key(plain)  # 0 steps is the plain model: one answer


def test_openai_keys_follow_the_request_body(server: ChatServer) -> None:
    asking = ServerConfig(base_urls=(server.base_url,), max_retries=0)
    backend = OpenAIBackend("m", "local", False, asking, max_new_tokens=8, continues_answers=True)
    requests = run_requests(conditions(CHAT, defenses=["anti_ic"], attacks=["prefill:comply"]))
    answers = dict(backend.generate(requests))
    assert len(server.bodies) == len(requests) and all(answers[i].response for i in range(len(requests)))
    sent = [canonical(body) for body in server.bodies]
    assert set(sent) == {
        canonical(on_the_wire(backend.payload(r))) for r in requests
    }  # each body is a request's payload, as keyed
    assert_keys_follow_payloads(requests, backend.cache_key, [canonical(backend.payload(r)) for r in requests])
    backend.close()


@pytest.mark.slow  # starts a stand-in engine process
def test_served_engine_keys_follow_the_request_body_and_a_prefill_is_continued(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in standin_engine("vllm", tmp_path / "bin").items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("STANDIN_BODIES", str(tmp_path / "bodies.jsonl"))
    engine = EngineServer(EngineConfig(engine="vllm", logs_dir=tmp_path / "logs"), str(tiny_model_dir), "m", "m")
    backend = ServedBackend(
        "m", engine, False, ServerConfig(max_retries=0), "tiny", max_new_tokens=8, decoding=Decoding()
    )
    requests = run_requests(conditions(CHAT, defenses=["anti_ic"], attacks=["prefill:comply"]))
    try:
        answers = dict(backend.generate(requests))
    finally:
        backend.close()
    bodies = [json.loads(line) for line in (tmp_path / "bodies.jsonl").read_text().splitlines()]
    assert len(bodies) == len(requests)
    sent = {canonical(body) for body in bodies}
    payloads = [canonical(on_the_wire(backend.cache_key(r)["payload"])) for r in requests]
    assert sent == set(payloads)  # the key holds each body as it was sent
    assert_keys_follow_payloads(requests, backend.cache_key, payloads)
    for index, request in enumerate(requests):
        response = answers[index].response or ""
        continued = request.prefill is not None
        assert response.startswith(f"{request.prefill}{CONTINUED}" if continued else "Answer to:"), response
    assert not engine.running
