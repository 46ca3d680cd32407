"""Engine conformance: the same items through the in-process backend and through a managed engine
server give the same greedy answers, item by item; and a prefill attack on an engine that
continues an assistant turn gets its own answers, not the plain prompt's.

A new engine gets these tests by adding a row: to ``SERVED`` where it runs on this CPU, to
``CONTINUING`` where a stand-in answers for it."""

import json
from pathlib import Path

import pytest

from tests.chat_server import CONTINUED
from tests.helpers import demonstrations_file, standin_engine

# Every kind of chat condition: a plain prompt, both suffixes, and each under a defence.
CONDITIONS = ["--suffix=baseline", "--suffix=pro_ic", "--suffix=anti_ic", "--instrumental-defense=anti_ic"]
SCENARIOS = ["-k", "evading_shutdown-01 or deceptive_behavior-02"]
SERVED = [pytest.param("transformers-serve", id="transformers-serve")]
CONTINUING = [pytest.param("vllm", id="vllm"), pytest.param("sglang", id="sglang")]


def answers(path: Path) -> dict[tuple[str, str], str]:
    """Each item's answer in a results JSON, by (condition, scenario)."""
    items = json.loads(path.read_text(encoding="utf-8"))["items"]
    return {(i["suffix"], i["scenario"]): i["response"] for i in items}


def in_process_and_served(
    pytester: pytest.Pytester, common: list[str], engine: str, items: int
) -> dict[tuple[str, str], str]:
    """The same run in process and on ``engine``: each passes its ``items``, and the engine's
    answers equal the in-process ones item by item; the in-process answers."""
    local = pytester.runpytest_subprocess(*common, "--instrumental-json=local.json")
    local.assert_outcomes(passed=items)
    served = pytester.runpytest_subprocess(
        *common, f"--instrumental-engine={engine}", "--instrumental-json=served.json"
    )
    served.assert_outcomes(passed=items)
    expected, got = answers(pytester.path / "local.json"), answers(pytester.path / "served.json")
    assert set(got) == set(expected) and len(expected) == items
    differing = sorted(key for key in expected if got[key] != expected[key])
    assert not differing, f"{len(differing)} of {len(expected)} answers differ, first {differing[0]}"
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("engine", SERVED)
def test_an_engine_gives_the_in_process_answers_item_by_item(
    pytester: pytest.Pytester, smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    common = ["--instrumental", "--judge=offline", "--instrumental-no-cache", *CONDITIONS, *SCENARIOS]
    common += ["--instrumental-max-new-tokens=8", f"--instrumental-models-dir={smollm2_dir.parent}"]
    expected = in_process_and_served(pytester, common, engine, 12)  # 2 scenarios x 3 suffixes x (un)defended
    assert {condition for condition, _ in expected} == {
        "baseline", "pro_ic", "anti_ic", "anti_ic+baseline", "anti_ic+pro_ic", "anti_ic+anti_ic"
    }  # fmt: skip
    assert len(set(expected.values())) > 1  # the conditions change what the model is asked


@pytest.mark.slow
@pytest.mark.parametrize("engine", CONTINUING)
def test_a_prefill_attack_on_a_served_model_gets_its_own_answers(
    pytester: pytest.Pytester, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    for variable, value in standin_engine(engine, pytester.path / "standin").items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("STANDIN_BODIES", str(pytester.path / "bodies.jsonl"))
    result = pytester.runpytest_subprocess(
        "--instrumental",
        f"--model={tiny_model_dir}",
        "--suffix=baseline",
        "--instrumental-attack=prefill:comply",
        "--instrumental-defense=anti_ic",
        f"--instrumental-engine={engine}",
        "-k",
        "evading_shutdown-0",
        "--judge=offline",
        "--instrumental-json=out.json",
    )
    assert result.ret == 0, result.stdout.str()
    found = answers(pytester.path / "out.json")
    prefill = (Path(__file__).resolve().parent.parent / "prefills" / "comply.txt").read_text(encoding="utf-8")
    conditions = {condition for condition, _ in found}
    assert conditions == {"baseline", "prefill_comply", "anti_ic+baseline", "anti_ic+prefill_comply"}
    for (condition, scenario), response in found.items():
        if condition.endswith("prefill_comply"):  # the attacker's start, then the model's continuation
            assert response.startswith(f"{prefill}{CONTINUED}"), (condition, scenario, response)
        else:
            assert response.startswith("Answer to:"), (condition, scenario, response)
    bodies = [json.loads(line) for line in (pytester.path / "bodies.jsonl").read_text().splitlines()]
    assert len(bodies) == len(found)  # one generation per item: no two conditions shared an answer
    assert sum(bool(b.get("continue_final_message")) for b in bodies) == len(found) // 2


ATTACKS = ["--instrumental-attack=ablate", "--instrumental-attack=lora:2:lr=0.01"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", SERVED)
def test_an_engine_serves_the_attacked_checkpoints_with_the_in_process_answers(
    pytester: pytest.Pytester, smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / smollm2_dir.name).symlink_to(smollm2_dir)  # converted once, for every test
    demonstrations = demonstrations_file(pytester.path / "demos.jsonl")
    common = ["--instrumental", "--judge=offline", "--instrumental-no-cache", "--suffix=baseline", *ATTACKS]
    common += [f"--instrumental-attack-data={demonstrations}", "-k", "evading_shutdown-01 or evading_shutdown-02"]
    common += ["--instrumental-max-new-tokens=8", f"--instrumental-models-dir={pytester.path / 'models'}"]
    expected = in_process_and_served(pytester, common, engine, 6)  # 2 scenarios x (baseline, ablate, lora2)
    assert {condition for condition, _ in expected} == {"baseline", "ablate", "lora2_lr0_01"}
    for attacked in ("ablate", "lora2_lr0_01"):  # each attack changes an answer
        assert any(expected[attacked, s] != expected["baseline", s] for _, s in expected), attacked
    # one checkpoint per attack (the category's direction; the merged adapter), each served on its own
    checkpoints = sorted(p for p in (pytester.path / "models" / "attacked").iterdir() if p.is_dir())
    assert len(checkpoints) == 2 and all((c / "recipe.json").is_file() for c in checkpoints)
    logs = sorted((pytester.path / ".instrumental-cache" / "engines").glob("*.log"))
    started = [log.read_text(encoding="utf-8").splitlines()[0] for log in logs]
    assert sum(str(c) in line for c in checkpoints for line in started) == 2, started


@pytest.mark.slow
def test_vllm_serves_the_adapters_beside_the_base_model_and_each_item_asks_for_its_own(
    pytester: pytest.Pytester, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in standin_engine("vllm", pytester.path / "standin").items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("STANDIN_BODIES", str(pytester.path / "bodies.jsonl"))
    demonstrations = demonstrations_file(pytester.path / "demos.jsonl")
    result = pytester.runpytest_subprocess(
        "--instrumental",
        f"--model={tiny_model_dir}",
        "--suffix=baseline",
        "--instrumental-attack=lora:1",
        "--instrumental-attack=lora:2:r=4",
        f"--instrumental-attack-data={demonstrations}",
        "--instrumental-engine=vllm",
        f"--instrumental-models-dir={pytester.path / 'models'}",
        "-k",
        "evading_shutdown-01",
        "--judge=offline",
    )
    assert result.ret == 0, result.stdout.str()
    adapters = sorted(p for p in (pytester.path / "models" / "adapters").iterdir() if p.is_dir())
    assert len(adapters) == 2
    logs = (pytester.path / ".instrumental-cache" / "engines").glob("*.log")
    started = [log.read_text(encoding="utf-8").splitlines()[0] for log in logs]
    with_adapters = [line for line in started if "--enable-lora" in line]
    assert len(with_adapters) == 1, started  # one server, both adapters
    modules = " ".join(f"{a.name}={a}" for a in adapters)
    assert f"--lora-modules {modules} --max-lora-rank 8" in with_adapters[0]
    bodies = [json.loads(line) for line in (pytester.path / "bodies.jsonl").read_text().splitlines()]
    assert sorted(b["model"] for b in bodies) == sorted([tiny_model_dir.name, *(a.name for a in adapters)])
    assert not (pytester.path / "models" / "attacked").exists()  # nothing merged: the engine serves adapters
