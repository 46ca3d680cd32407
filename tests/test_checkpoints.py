"""Attacked models as checkpoints: the ablation baked into the weights and the adapter merged into
them give the answers the in-process hooks and adapter give, greedy, item by item, on the tiny
random Qwen3 and on the embedded SmolLM2 (whose output embeddings are tied to its input ones)."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from pytest_instrumental.backends.ablation import AblationPlan, ablated
from pytest_instrumental.backends.checkpoints import checkpoint_dir, orthogonalise, save_checkpoint
from pytest_instrumental.backends.layers import decoder_layers
from pytest_instrumental.backends.lora import LoraPlan
from pytest_instrumental.errors import InputError
from pytest_instrumental.plan import unsuffixed_requests
from pytest_instrumental.vocabulary.conditions import PLAIN, Ablation, Condition, LoraAttack
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes
from tests.helpers import demonstrations, tiny_backend

ANTI = load_suffixes()["anti_ic"].text.strip()
CATEGORY = "evading_shutdown"


def one_category() -> list[Request]:
    """The plain prompts of one category: its items share one direction."""
    return [r for r in unsuffixed_requests(load_scenarios()) if r.category == CATEGORY]


def baked_answers(
    directory: Path, tmp_path: Path, requests: list[Request], *, ablation: bool, tokens: int
) -> tuple[list[str | None], list[str | None]]:
    """The answers under the in-process intervention, and the plain answers of its checkpoint."""
    plan = AblationPlan(None, ANTI, tuple(unsuffixed_requests(load_scenarios()))) if ablation else None
    lora = None if ablation else LoraPlan(0, tmp_path / "adapters")
    backend = tiny_backend(directory, ablation=plan, lora=lora, max_new_tokens=tokens)
    attacked = [replace(r, condition=Condition(Ablation() if ablation else LoraAttack(12, lr=1e-2))) for r in requests]
    if not ablation:
        attacked = [replace(r, training=demonstrations()) for r in attacked]
    in_process = dict(backend.generate(attacked))
    intervention = backend.intervention_for(attacked[0])
    assert intervention is not None
    target = checkpoint_dir(tmp_path / "attacked", backend.identity, backend.intervention_fields(attacked[0]))
    baked = intervention.bake(attacked[0], backend.load_copy())  # type: ignore[attr-defined]
    save_checkpoint(baked, backend.tokenizer, {"test": True}, target)
    served = dict(tiny_backend(target, max_new_tokens=tokens).generate([replace(r, condition=PLAIN) for r in requests]))
    return [in_process[i].response for i in range(len(requests))], [served[i].response for i in range(len(requests))]


def assert_baked_answers_match(directory: Path, tmp_path: Path, *, ablation: bool) -> None:
    """The attack changes answers, and its checkpoint gives the in-process answers item by item."""
    requests = one_category()[:6]
    in_process, baked = baked_answers(directory, tmp_path, requests, ablation=ablation, tokens=12)
    plain = dict(tiny_backend(directory, max_new_tokens=12).generate(requests))
    assert [plain[i].response for i in range(len(requests))] != in_process
    differing = [i for i in range(len(requests)) if in_process[i] != baked[i]]
    assert not differing, f"{len(differing)} of {len(requests)} answers differ: {in_process[differing[0]]!r}"


@pytest.mark.parametrize("model", ["tiny-qwen3", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_weights_orthogonalised_against_the_direction_answer_as_the_ablation_hooks_do(
    model: str, tiny_model_dir: Path, smollm2_dir: Path, tmp_path: Path
) -> None:
    assert_baked_answers_match(tiny_model_dir if model == "tiny-qwen3" else smollm2_dir, tmp_path, ablation=True)


def test_an_adapter_merged_into_the_weights_answers_as_the_adapter_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert_baked_answers_match(tiny_model_dir, tmp_path, ablation=False)


def test_a_tied_unembedding_is_untied_and_every_residual_write_loses_the_direction(smollm2_dir: Path) -> None:
    backend = tiny_backend(smollm2_dir, max_new_tokens=1)
    model: Any = backend.load_copy()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    unembedding = model.get_output_embeddings().weight.detach().clone()
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    orthogonalise(model, direction)
    unit = direction / direction.norm()
    assert model.config.tie_word_embeddings is False
    assert torch.equal(model.get_output_embeddings().weight, unembedding)  # the unembedding reads what it read
    assert float((model.get_input_embeddings().weight.detach() @ unit).abs().max()) < 1e-5
    for layer in decoder_layers(model):
        for written in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
            assert float((unit @ written.detach()).abs().max()) < 1e-5


def test_a_mixture_of_experts_is_orthogonalised_expert_by_expert() -> None:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    model = Qwen3MoeForCausalLM(config)
    model.train(False)
    direction = torch.randn(32)
    ids = torch.tensor([[3, 17, 5, 99, 42, 7]])
    with torch.inference_mode(), ablated(model, direction, None):
        hooked = model(input_ids=ids).logits
    orthogonalise(model, direction)
    with torch.inference_mode():
        baked = model(input_ids=ids).logits
    assert float((hooked - baked).abs().max()) < 1e-4


def test_a_sublayer_without_a_known_output_projection_is_an_error_naming_the_way_out(tiny_model_dir: Path) -> None:
    model = tiny_backend(tiny_model_dir, max_new_tokens=1).load_copy()
    layer = decoder_layers(model)[1]
    layer.mlp.output = layer.mlp.down_proj  # an architecture that names it otherwise
    del layer.mlp.down_proj
    with pytest.raises(InputError, match=r"layer 1's mlp of Qwen3ForCausalLM has no output projection.*in process"):
        orthogonalise(model, torch.ones(model.config.hidden_size))


def test_a_checkpoint_is_named_by_the_base_weights_and_the_attack() -> None:
    fields = {"ablation": {"attack": "ablate", "direction": "d1"}}
    first = checkpoint_dir(Path("/m"), "base", fields)
    assert first == checkpoint_dir(Path("/m"), "base", dict(fields))
    assert first != checkpoint_dir(Path("/m"), "other", fields)
    assert first != checkpoint_dir(Path("/m"), "base", {"ablation": {"attack": "ablate", "direction": "d2"}})
