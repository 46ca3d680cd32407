"""Attacked models as checkpoints any engine serves.

An attack on the weights has two forms: in process, a hook or an adapter on the loaded model
(ablation.py, lora.py), and baked, a model directory with the attack in its weights, which vLLM,
SGLang or ``transformers serve`` load like any other model. Both forms are one attack:

- directional ablation (``ablate``) as Arditi et al. (2024) orthogonalise the weights: the
  direction projected out of the embeddings and out of every matrix (and bias) that writes to the
  residual stream, each attention's and each MLP's output projection (each expert's, in a mixture
  of experts). No write then has a component along it, which is what the hooks compute. A model
  whose output embeddings are tied to its input embeddings gets its own, untied copy of the
  originals: the unembedding reads the normalised residual, which the hooks leave as it is.
- fine-tuning (``lora:STEPS``): the adapter merged into the weights (lora.py: ``merge_adapter``).

A checkpoint is kept under ``<models dir>/attacked``, named by a hash of the base weights and the
cache fields of the attack (the direction's recipe, or the adapter's), so it is made once and
shared by every process that needs it (cache.build_once), and ``recipe.json`` beside the weights
says what made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.backends.layers import decoder_layers
from pytest_instrumental.cache import digest
from pytest_instrumental.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CHECKPOINTS_DIR_NAME = "attacked"  # under the models directory
RECIPE_FILE = "recipe.json"
# The parameters of a sublayer that write to the residual stream: its output projection's weight
# and bias, under the names the decoder families use (Llama, Qwen, Mistral, and their MoE experts).
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "c_proj", "dense", "fc2", "w2")


def checkpoint_dir(checkpoints_dir: Path, base: str, fields: dict[str, Any]) -> Path:
    """Where the checkpoint of an attack (its cache ``fields``) on the weights ``base`` is kept."""
    return checkpoints_dir / digest({"base": base, **fields})[:24]


def orthogonalise(model: PreTrainedModel, direction: torch.Tensor) -> None:
    """Project ``direction`` out of every write to ``model``'s residual stream, in place: the
    input embeddings, and each decoder layer's attention and MLP output projections."""
    import torch

    unit = (direction.double() / direction.double().norm()).cpu()
    embeddings: Any = model.get_input_embeddings()
    unembedding: Any = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    with torch.no_grad():
        if unembedding is not None and unembedding.weight is embeddings.weight:
            unembedding.weight = torch.nn.Parameter(embeddings.weight.detach().clone(), requires_grad=False)
            for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
                config.tie_word_embeddings = False
        _remove(embeddings.weight, unit, hidden_dim=-1)
        for index, block in enumerate(decoder_layers(model)):
            for sublayer in ("self_attn", "mlp"):
                written = _output_parameters(getattr(block, sublayer, None))
                if not written:
                    raise InputError(
                        f"--instrumental-attack ablate: layer {index}'s {sublayer} of {type(model).__name__} has no "
                        f"output projection named one of {', '.join(OUTPUT_PROJECTIONS)}; it cannot be baked into a "
                        "checkpoint: ablate it in process (--instrumental-engine=local)"
                    )
                for parameter in written:
                    # a weight is [..., hidden, in] (experts stacked in front), a bias [hidden]
                    hidden_dim = -1 if parameter.dim() == 1 else -2
                    if parameter.shape[hidden_dim] != unit.numel():
                        raise InputError(
                            f"--instrumental-attack ablate: layer {index}'s {sublayer} of {type(model).__name__} "
                            f"writes {parameter.shape[hidden_dim]} values, not the residual's {unit.numel()}; ablate "
                            "it in process (--instrumental-engine=local)"
                        )
                    _remove(parameter, unit, hidden_dim)


def _output_parameters(sublayer: Any) -> list[torch.Tensor]:
    """The weights and biases of ``sublayer`` that write to the residual stream."""
    if sublayer is None:
        return []
    found = []
    for name, parameter in sublayer.named_parameters():
        owner, _, kind = name.rpartition(".")
        projection = owner.rpartition(".")[2] if kind in ("weight", "bias") else kind  # experts: a bare tensor
        if projection in OUTPUT_PROJECTIONS:
            found.append(parameter)
    return found


def _remove(parameter: torch.Tensor, unit: torch.Tensor, hidden_dim: int) -> None:
    """``parameter`` without its component along ``unit`` on dimension ``hidden_dim``, computed in
    double precision and written back in the parameter's own dtype."""
    import torch

    values = parameter.detach().to(device="cpu", dtype=torch.float64)
    moved = values.movedim(hidden_dim, -1)
    cleaned = moved - (moved @ unit).unsqueeze(-1) * unit
    parameter.copy_(cleaned.movedim(-1, hidden_dim).to(device=parameter.device, dtype=parameter.dtype))


def save_checkpoint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: dict[str, Any], target: Path
) -> None:
    """The weights, config, generation config and tokenizer (its chat template with it) in
    ``target``, with ``recipe.json`` saying what made them."""
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    (target / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, ensure_ascii=False), encoding="utf-8")
