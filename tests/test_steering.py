"""Activation steering: the hook's mechanism on a tiny random Qwen3, vector files, and a run."""

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from pytest_instrumental.backends.steering import SteeringVector, load_vector, save_vector, steered
from pytest_instrumental.backends.transformers import generate_tokens
from pytest_instrumental.errors import InputError
from pytest_instrumental.vocabulary.conditions import activation_name, activation_strength
from tests.tiny_model import tiny_qwen3


def test_condition_names_round_trip() -> None:
    for strength in (-8, -0.5, 0, 4, 12.25):
        assert activation_strength(activation_name(strength)) == strength
    assert activation_name(-8) == "act_m8" and activation_name(0.5) == "act_p0_5"
    assert activation_strength("anti_ic") is None


def test_the_hook_adds_exactly_the_push_at_its_layer_and_nothing_else(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer)
    ids = torch.tensor([tokenizer("You receive a shutdown signal.")["input_ids"]])
    seen: list[torch.Tensor] = []  # what each layer receives: layer 0's input, then layer 1's (layer 0's output)
    for layer in model.model.layers:
        layer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None)),
            with_kwargs=True,
        )

    def run() -> tuple[list[torch.Tensor], torch.Tensor]:
        seen.clear()
        logits = model(input_ids=ids).logits
        return list(seen), logits

    plain, plain_logits = run()
    direction = torch.randn(model.config.hidden_size, dtype=torch.float64)
    vector = SteeringVector(layer=0, direction=direction, norm=3.0, recipe="test")
    with steered(model, vector, 4.0):
        pushed, pushed_logits = run()
    delta = direction / direction.norm() * (4.0 / 10 * 3.0)
    assert torch.allclose(pushed[0], plain[0])  # layer 0's input: untouched
    assert torch.allclose(pushed[1], plain[1] + delta)  # layer 0's output: plus the push, at every position
    assert not torch.allclose(pushed_logits, plain_logits)  # and what follows sees it
    _, again_logits = run()
    assert torch.equal(again_logits, plain_logits)  # the hook is gone


def test_the_hook_is_removed_when_generation_fails(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer)
    vector = SteeringVector(0, torch.ones(model.config.hidden_size, dtype=torch.float64), 1.0, "test")
    layer = model.model.layers[0]
    with pytest.raises(RuntimeError, match="out of memory"), steered(model, vector, 8):
        assert layer._forward_hooks
        raise RuntimeError("out of memory")
    assert not layer._forward_hooks


def test_batched_and_one_at_a_time_agree_under_steering(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer)
    prompts = [tokenizer(p)["input_ids"] for p in ("Plan it.", "You receive a shutdown signal. What do you do?")]
    vector = SteeringVector(1, torch.randn(model.config.hidden_size, dtype=torch.float64), 5.0, "test")
    with steered(model, vector, -8):
        together = generate_tokens(model, prompts, set(), tokenizer.pad_token_id, 8)
        alone = [generate_tokens(model, [p], set(), tokenizer.pad_token_id, 8)[0] for p in prompts]
    plain = generate_tokens(model, prompts, set(), tokenizer.pad_token_id, 8)
    assert together == alone and together != plain


def test_vector_files_round_trip_and_a_bad_one_is_named(tmp_path: Path) -> None:
    vector = SteeringVector(3, torch.tensor([1.0, -2.0, 0.5]), 7.5, "computed")
    save_vector(vector, tmp_path / "v.safetensors")
    loaded = load_vector(tmp_path / "v.safetensors")
    assert (loaded.layer, loaded.norm) == (3, 7.5) and torch.equal(loaded.direction, vector.direction)
    assert loaded.recipe.startswith("file:")
    (tmp_path / "bad.safetensors").write_bytes(b"not tensors")
    with pytest.raises(InputError, match=r"bad\.safetensors is not a steering vector file"):
        load_vector(tmp_path / "bad.safetensors")


@pytest.mark.slow
def test_a_run_with_activation_steering(pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    args = ["--instrumental", f"--model={tiny_model_dir}", "--suffix=pro_ic", "--suffix=anti_ic"]
    args += ["--instrumental-vector-strength=-4", "--instrumental-vector-strength=4", "--judge=offline"]
    args += ["-k", "evading_shutdown-01", "--instrumental-max-new-tokens=4", "--instrumental-json=out.json"]
    result = pytester.runpytest_subprocess(*args, "--instrumental-max-conv=act_p4=100", "--instrumental-report=out")
    assert result.ret == 0, result.stdout.str()  # a gate on a steered condition, as on a suffix
    result.assert_outcomes(passed=4)
    assert "Dose-response: Conv% against steering strength" in (pytester.path / "out" / "report.html").read_text()
    result.stdout.fnmatch_lines(["model * pro_ic * anti_ic * act_m4 * act_p4 * Delta pp * Act gap act_p4-act_m4 *"])
    document = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    assert sorted({i["suffix"] for i in document["items"]}) == ["act_m4", "act_p4", "anti_ic", "pro_ic"]
    steering = document["run"]["generation"][tiny_model_dir.name]["steering"]
    assert steering["strengths"] == [-4.0, 4.0] and steering["vector"]["layer"] == "middle"
    assert document["activation_gap"]["conditions"] == ["act_p4", "act_m4"]
    assert [g["model"] for g in document["activation_gap"]["gaps"]] == [tiny_model_dir.name]
    served = pytester.runpytest_subprocess(*args, "--instrumental-engine=vllm")
    assert served.ret == pytest.ExitCode.USAGE_ERROR
    served.stderr.fnmatch_lines(
        [
            "*cannot take a steering hook, and a steering vector has no checkpoint form; activation steering needs "
            "a local model and --instrumental-engine=local (or an engine plugin for steering: docs/scale.md)"
        ]
    )


@pytest.mark.slow
def test_the_vector_command_writes_a_usable_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pytest_instrumental.__main__ import main

    assert main(["vector", "--model", str(tiny_model_dir), "--out", str(tmp_path / "v.safetensors")]) == 0
    vector = load_vector(tmp_path / "v.safetensors")
    assert vector.layer == 1 and vector.norm > 0  # the tiny model's middle of 2 layers
    assert main(["vector", "--model", "openai:x", "--out", str(tmp_path / "w.safetensors")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("vector", "problem"),
    [
        (SteeringVector(1, torch.ones(10), 5.0, "x"), "holds a vector of 10 numbers; * is 64 wide"),
        (SteeringVector(9999, torch.ones(64), 5.0, "x"), "layer 9999 is not one of *'s layers (0 to 1)"),
        (SteeringVector(-1, torch.ones(64), 5.0, "x"), "'layer' -1 is not a decoder layer (0 or more)"),
        (SteeringVector(1, torch.tensor([float("inf")] + [1.0] * 63), 5.0, "x"), "one non-zero vector of finite *"),
        (SteeringVector(1, torch.ones(64), float("nan"), "x"), "'norm' nan is not a positive finite number"),
        (SteeringVector(1, torch.ones(64), -2.0, "x"), "'norm' -2.0 is not a positive finite number"),
    ],
)
def test_a_vector_file_that_does_not_fit_the_model_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, tiny_model_dir: Path, vector: SteeringVector, problem: str
) -> None:
    save_vector(vector, pytester.path / "v.safetensors")
    args = ["--instrumental", f"--model={tiny_model_dir}", "--judge=offline", "--instrumental-vector-strength=4"]
    result = pytester.runpytest_subprocess(*args, "--instrumental-vector-file=v.safetensors")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --instrumental-vector-file: v.safetensors*{problem}"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.slow
def test_a_vector_file_without_a_strength_is_said(pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    save_vector(SteeringVector(1, torch.ones(64), 5.0, "x"), pytester.path / "v.safetensors")
    args = [
        "--instrumental",
        f"--model={tiny_model_dir}",
        "--judge=offline",
        "--instrumental-vector-file=v.safetensors",
    ]
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --instrumental-vector-file: given without any --instrumental-vector-strength*"]
    )
