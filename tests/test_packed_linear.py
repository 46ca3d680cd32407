"""Linear layers packed for oneDNN (backends/packed_linear.py), on a tiny random Qwen3."""

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from pytest_instrumental.backends import packed_linear
from pytest_instrumental.backends.packed_linear import PackedLinear, can_pack, pack, packed_linears
from pytest_instrumental.backends.transformers import TransformersBackend
from pytest_instrumental.config import GenerationConfig
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from tests.tiny_model import tiny_qwen3

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
    reason="this torch has no oneDNN",
)


@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_linear_computes_what_the_linear_does(bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=bias)
    inputs = torch.randn(3, 7, 96)  # a batch of rows by positions, as a decoder layer gives it
    with torch.inference_mode():
        expected, packed = linear(inputs), PackedLinear(linear)(inputs)
    assert packed.shape == expected.shape == (3, 7, 40)
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


def test_a_model_computes_with_packed_linears_inside_the_block_only(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer, dtype=torch.float32)
    ids = torch.tensor([tokenizer("You receive a shutdown signal.")["input_ids"]])
    packed = pack(model)
    linears = [name for name, module in model.named_modules() if type(module) is torch.nn.Linear]
    assert len(packed) == len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; the output head
    with torch.inference_mode():
        expected = model(ids).logits
        with packed_linears(model, packed):
            assert type(model.get_submodule("model.layers.0.self_attn.q_proj")) is PackedLinear
            got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert [name for name, module in model.named_modules() if type(module) is torch.nn.Linear] == linears

    with pytest.raises(RuntimeError, match="stop"), packed_linears(model, packed):
        raise RuntimeError("stop")
    assert type(model.get_submodule("lm_head")) is torch.nn.Linear  # restored whatever happened


def test_only_a_float32_cpu_model_with_memory_for_a_copy_is_packed(
    tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_qwen3(tokenizer, dtype=torch.float32)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(packed_linear, "available_memory", lambda: 2 * weights)
    assert can_pack(model)
    monkeypatch.setattr(packed_linear, "available_memory", lambda: 2 * weights - 1)
    assert not can_pack(model)  # a second copy would leave too little for the KV caches
    monkeypatch.setattr(packed_linear, "available_memory", lambda: 100 * weights)
    assert not can_pack(tiny_qwen3(tokenizer, dtype=torch.float64))
    assert not can_pack(model.bfloat16())


def test_the_backend_generates_with_packed_linears_and_leaves_the_model_as_loaded(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_instrumental.backends import transformers as backend_module

    backend = TransformersBackend(
        "tiny",
        str(tiny_model_dir),
        None,
        False,
        "t",
        generation=GenerationConfig(models_dir=tiny_model_dir.parent),
        max_new_tokens=4,
    )
    seen: list[type] = []
    original = backend_module.decode_rows

    def spy(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        seen.append(type(model.get_submodule("model.layers.0.mlp.down_proj")))
        return original(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backend_module, "decode_rows", spy)
    request = Request(ItemKey("tiny", "baseline", "cat-01"), "cat", "You are an agent.", "Plan it.")
    ((_, generation),) = list(backend.generate([request]))
    assert generation.response is not None
    assert seen == [PackedLinear]
    assert type(backend.model.get_submodule("model.layers.0.mlp.down_proj")) is torch.nn.Linear
