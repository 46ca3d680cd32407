"""Directional ablation: the direction through which a defence acts, projected out of the residual
stream, on a tiny random Qwen3 (two layers)."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_instrumental.backends.ablation import AblationPlan, Directions, ablated, last_token_states
from pytest_instrumental.backends.layers import decoder_layers
from pytest_instrumental.plan import plan_requests, unsuffixed_requests
from pytest_instrumental.vocabulary.conditions import PLAIN, Ablation, Condition, attack_ablation, parse_condition
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes
from tests.chat_server import ChatServer
from tests.helpers import conditions, tiny_backend

ANTI = load_suffixes()["anti_ic"].text.strip()


def ablation_plan() -> AblationPlan:
    return AblationPlan(None, ANTI, tuple(unsuffixed_requests(load_scenarios())))


def test_ablations_are_conditions_named_for_k_and_parsed_back() -> None:
    planned = conditions(["baseline"], [], ["anti_ic"], ["ablate", "ablate:1"])
    assert [c.name for c in planned] == [
        "baseline",
        "ablate",
        "ablate_l1",
        "anti_ic+baseline",
        "anti_ic+ablate",
        "anti_ic+ablate_l1",
    ]
    suffixes = load_suffixes()
    assert planned[5] == Condition(Ablation(1), suffixes["anti_ic"])
    assert planned[5].push.attack == "ablate:1" and planned[4].push.attack == "ablate"
    assert all(parse_condition(c.name, suffixes) == c for c in planned)
    assert attack_ablation("ablate") == Ablation() and attack_ablation("ablate:12") == Ablation(12)
    assert attack_ablation("prefill:comply") is None
    with pytest.raises(ValueError, match="the layer to ablate at is a whole number"):
        attack_ablation("ablate:-1")


def captured_states(model: Any, ids: torch.Tensor) -> list[torch.Tensor]:
    """What flows between layers, as the next layer sees it: the first layer's input (the
    embeddings), then every layer's output, captured by hooks registered after the ablation's."""
    states: list[torch.Tensor] = []
    layers = decoder_layers(model)
    handles = [layers[0].register_forward_pre_hook(lambda m, args, kwargs: states.append(args[0]), with_kwargs=True)]
    handles += [layer.register_forward_hook(lambda m, a, out: states.append(out)) for layer in layers]
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return states


def test_ablation_leaves_the_residual_stream_orthogonal_to_the_direction_at_every_hooked_layer(
    tiny_model_dir: Path,
) -> None:
    backend = tiny_backend(tiny_model_dir, max_new_tokens=2)
    model = backend.model
    request = unsuffixed_requests(load_scenarios())[0]
    ids = torch.tensor([backend.encode(request)])
    direction = Directions(model, backend.encode, ablation_plan()).direction(ANTI, request.category, 1)
    unit = direction / direction.norm()

    def along(states: list[torch.Tensor]) -> list[float]:
        """The largest share of a position's norm along the direction (the pad token embeds as 0)."""
        return [float(((s @ unit).abs() / s.norm(dim=-1).clamp_min(1e-12)).max()) for s in states]

    plain = along(captured_states(model, ids))
    assert all(share > 1e-3 for share in plain), plain  # the direction is there to remove
    with ablated(model, direction, None):
        everywhere = along(captured_states(model, ids))
    assert all(share < 1e-5 for share in everywhere), everywhere
    read_by_mlp: list[torch.Tensor] = []  # the residual after attention, which each MLP reads (normed)
    handles = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda m, args: read_by_mlp.append(args[0][0]))
        for layer in decoder_layers(model)
    ]
    try:
        assert all(share > 1e-3 for share in along_all(read_by_mlp, model, ids, unit))
        read_by_mlp.clear()
        with ablated(model, direction, None):  # every write to the residual stream, as Arditi et al. define it
            assert all(share < 1e-5 for share in along_all(read_by_mlp, model, ids, unit))
    finally:
        for handle in handles:
            handle.remove()
    with ablated(model, direction, 0):
        at_zero = along(captured_states(model, ids))
    assert at_zero[1] < 1e-5  # layer 0's output
    assert at_zero[0] > 1e-3 and at_zero[2] > 1e-3  # the embeddings and layer 1 are not hooked


def along_all(captured: list[torch.Tensor], model: Any, ids: torch.Tensor, unit: torch.Tensor) -> list[float]:
    """Run the model once; the largest share along ``unit`` of each state ``captured`` collected."""
    with torch.no_grad():
        model(input_ids=ids)
    return [float(((s @ unit).abs() / s.norm(dim=-1).clamp_min(1e-12)).max()) for s in captured]


def test_the_direction_is_the_defence_minus_none_on_the_other_categories_only(tiny_model_dir: Path) -> None:
    backend = tiny_backend(tiny_model_dir, max_new_tokens=2)
    plan = ablation_plan()
    category = plan.prompts[0].category
    held_out = plan.held_out(category)
    assert held_out and all(p.category != category for p in held_out)
    assert len(held_out) == len(plan.prompts) - sum(p.category == category for p in plan.prompts)
    states = [last_token_states(backend.model, backend.encode(p))[1] for p in held_out]
    defended = [
        last_token_states(
            backend.model, backend.encode(replace(p, condition=Condition(p.condition.push, load_suffixes()["anti_ic"])))
        )[1]
        for p in held_out
    ]
    expected = torch.stack(defended).mean(dim=0) - torch.stack(states).mean(dim=0)
    direction = Directions(backend.model, backend.encode, plan).direction(ANTI, category, 1)
    assert torch.allclose(direction, expected, atol=1e-6)
    assert plan.recipe(ANTI, category, 1) != plan.recipe(ANTI, held_out[0].category, 1)
    assert plan.recipe(ANTI, category, 1) != plan.recipe("another instruction", category, 1)


def test_ablated_batches_equal_one_at_a_time_and_the_hooks_go_after_each_batch(tiny_model_dir: Path) -> None:
    scenarios = load_scenarios()
    requests = plan_requests(["tiny"], conditions(defenses=["anti_ic"], attacks=["ablate", "ablate:0"]), scenarios)
    # two scenarios of two categories under each of the four conditions
    first, second = (c.scenarios[0].id for c in scenarios.categories[:2])
    chosen = [r for r in requests if r.key.scenario in (first, second)]
    assert {r.key.condition for r in chosen} == {"ablate", "ablate_l0", "anti_ic+ablate", "anti_ic+ablate_l0"}
    backend = tiny_backend(tiny_model_dir, max_new_tokens=4, ablation=ablation_plan(), defended=True)
    together = dict(backend.generate(chosen))
    layers = decoder_layers(backend.model)
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in layers)
    alone = [dict(backend.generate([r]))[0] for r in chosen]
    assert [together[i] for i in range(len(chosen))] == alone
    plain = [dict(backend.generate([replace(r, condition=replace(r.condition, push=PLAIN.push))]))[0] for r in chosen]
    assert plain != alone  # the ablation changed what the model says
    keys = [json.dumps(backend.cache_key(r), sort_keys=True) for r in chosen]
    assert len(set(keys)) == len(keys)  # each condition and category has its own cache entry


def test_the_hooks_are_removed_when_generation_fails(tiny_model_dir: Path) -> None:
    backend = tiny_backend(tiny_model_dir, max_new_tokens=2, ablation=ablation_plan())
    layers = decoder_layers(backend.model)

    def fail(*args: Any) -> None:
        raise RuntimeError("out of memory")

    request = plan_requests(["tiny"], conditions(attacks=["ablate"]), load_scenarios())[0]
    backend._decode = fail  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError, match="out of memory"):
        list(backend.generate([request]))
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in layers)


def test_ablation_on_a_server_or_at_a_layer_the_model_lacks_is_a_usage_error(
    pytester: pytest.Pytester, server: ChatServer, tiny_model_dir: Path
) -> None:
    served = pytester.runpytest_subprocess(
        "--instrumental",
        "--model=openai:local",
        f"--instrumental-base-url={server.base_url}",
        "--instrumental-attack=ablate",
        "--judge=offline",
    )
    assert served.ret == pytest.ExitCode.USAGE_ERROR
    served.stderr.fnmatch_lines(
        [
            "ERROR: --instrumental-attack ablate: openai:local is served elsewhere, which cannot be started on the "
            "attacked checkpoint; use --instrumental-engine=local, vllm, sglang or transformers-serve (docs/scale.md)"
        ]
    )
    local = ["--instrumental", f"--model={tiny_model_dir}", "--judge=offline"]
    on_gguf = pytester.runpytest_subprocess(
        *local, "--instrumental-engine=llama-server", "--instrumental-attack=ablate"
    )
    on_gguf.stderr.fnmatch_lines(["*: tiny-qwen3* is served by llama-server, which cannot be started on the attacked*"])
    at_a_layer = pytester.runpytest_subprocess(*local, "--instrumental-engine=vllm", "--instrumental-attack=ablate:1")
    at_a_layer.stderr.fnmatch_lines(
        ["ERROR: --instrumental-attack ablate:1: * runs in a server, which cannot take an ablation hook, and removing "
         "a direction at one layer has no checkpoint form; directional ablation at one layer needs a local model *"]
    )  # fmt: skip
    missing = pytester.runpytest_subprocess(*local, "--instrumental-attack=ablate:2")
    missing.stderr.fnmatch_lines(
        [f"ERROR: --instrumental-attack ablate:2: layer 2 is not one of {tiny_model_dir.name}'s layers (0 to 1)"]
    )
    malformed = pytester.runpytest_subprocess(*local, "--instrumental-attack=ablate:x")
    malformed.stderr.fnmatch_lines(["*'ablate:x': the layer to ablate at is a whole number, from 0*"])


@pytest.mark.slow
def test_a_local_run_under_a_defence_and_an_ablation_records_each_part_and_reruns_from_the_cache(
    pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    args = (
        "--instrumental",
        f"--model={tiny_model_dir}",
        "--judge=offline",
        "--suffix=baseline",
        "--instrumental-defense=anti_ic",
        "--instrumental-attack=ablate",
        "--instrumental-max-new-tokens=2",
        "-k",
        "evading_shutdown-01",
        "--instrumental-json=results.json",
        f"--instrumental-models-dir={tiny_model_dir}",
    )
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    document = json.loads((pytester.path / "results.json").read_text(encoding="utf-8"))
    parts = {item["suffix"]: item["condition"] for item in document["items"]}
    assert set(parts) == {"baseline", "ablate", "anti_ic+baseline", "anti_ic+ablate"}
    assert parts["anti_ic+ablate"] == {"defense": "anti_ic", "suffix": None, "attack": "ablate", "strength": None}
    (record,) = document["run"]["generation"].values()
    assert record["ablation"]["attacks"] == ["ablate"] and record["ablation"]["measured_at"] == "middle"
    assert {row["push"] for row in document["dilemma"]["overrides"]} >= {"ablate"}
    rerun = pytester.runpytest_subprocess(*args)
    assert "generating" in result.stderr.str()
    assert rerun.ret == 0 and "generating" not in rerun.stderr.str()
