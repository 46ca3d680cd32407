"""Activation steering: the stronger lever someone holding the weights has, next to a prompt suffix.

A steering vector is a direction in the residual stream at one decoder layer: the mean
difference of the activations at the last prompt token between the pro_ic-steered and the
anti_ic-steered prompts of the contrast scenarios (Contrastive Activation Addition, Rimsky et al.
2024). While a steered item generates, a forward hook on that layer adds ``strength / 10`` of the
layer's typical residual norm along the unit direction, at every position, so the same strength
is a comparable push on different models.

No leakage: the vector for a scenario's items is computed from the other categories' scenarios
only (the five other categories): scenarios of one category share their setting and phrasing,
so a vector learned from the same category would carry the test scenario's own words. A
vector file (safetensors: ``direction``, ``layer``, ``norm``) is used as it is, for every
category: that is how an attacker's vector is tested.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.backends.layers import decoder_layers
from pytest_instrumental.backends.protocol import Host
from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import VECTOR_LIMIT, read_bytes
from pytest_instrumental.progress import Progress, progress_bar
from pytest_instrumental.vocabulary.conditions import Activation
from pytest_instrumental.vocabulary.request import Request

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

STRENGTH_UNIT = 10.0  # strength S adds S / STRENGTH_UNIT of the typical residual norm


@dataclass(frozen=True)
class SteeringVector:
    layer: int
    direction: Any  # torch.Tensor [hidden], not normalised
    norm: float  # the layer's typical residual norm at the last prompt token
    recipe: str  # what determines it, for cache keys: a file's hash, or how it was computed

    def delta(self, strength: float) -> torch.Tensor:
        unit = self.direction / self.direction.norm()
        push: torch.Tensor = unit * (strength / STRENGTH_UNIT * self.norm)
        return push


def check_fits(vector: SteeringVector | None, layer: int | None, model: str, config_dir: str, where: str) -> None:
    """A vector file (or ``--instrumental-vector-layer``) checked against the model's config before
    any work: its width must be the model's hidden size and its layer one of the model's layers."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    except Exception:
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width, layers = int(text.hidden_size), int(text.num_hidden_layers)
    if vector is not None and vector.direction.numel() != width:
        raise InputError(f"{where} holds a vector of {vector.direction.numel()} numbers; {model} is {width} wide")
    chosen = vector.layer if vector is not None else layer
    if chosen is not None and chosen >= layers:
        raise InputError(f"{where}: layer {chosen} is not one of {model}'s layers (0 to {layers - 1})")


def default_layer(model: PreTrainedModel) -> int:
    """A middle layer: where contrastive directions are usually found to steer behaviour."""
    return int(model.config.num_hidden_layers) // 2


def last_token_activations(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], layer: int, progress: Progress | None = None
) -> torch.Tensor:
    """The residual stream after decoder layer ``layer`` at each prompt's last token: [prompts, hidden]."""
    import torch

    rows = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=model.device)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            rows.append(hidden[layer + 1][0, -1].float().cpu())  # hidden_states[0] is the embeddings
            if progress is not None:
                progress.update(1)
    return torch.stack(rows)


def contrast_vector(
    model: PreTrainedModel,
    pro: Sequence[Sequence[int]],
    anti: Sequence[Sequence[int]],
    layer: int,
    recipe: str,
    progress: Progress | None = None,
) -> SteeringVector:
    """CAA: mean(pro activations) - mean(anti activations) at ``layer``; ``progress`` counts prompts."""
    if not pro or not anti:
        raise InputError("activation steering: no contrast prompts to compute a vector from")
    pro_states = last_token_activations(model, pro, layer, progress)
    anti_states = last_token_activations(model, anti, layer, progress)
    direction = pro_states.mean(dim=0) - anti_states.mean(dim=0)
    import torch

    norm = float(torch.cat([pro_states, anti_states]).norm(dim=-1).mean())
    return SteeringVector(layer, direction, norm, recipe)


@dataclass(frozen=True)
class SteeringPlan:
    """How a local model is steered: ``layer`` (None: its middle layer) and either a user's vector
    (``vector``) or the contrast pairs a vector is computed from per held-out category."""

    layer: int | None
    vector: SteeringVector | None
    contrast: tuple[tuple[Request, Request], ...]  # (pro_ic, anti_ic) request of each scenario

    def recipe(self, category: str, layer: int) -> str:
        """What determines the vector the items of ``category`` are steered with."""
        if self.vector is not None:
            return self.vector.recipe
        pairs = [[pro.context, pro.steered_prompt, anti.steered_prompt] for pro, anti in self.held_out(category)]
        digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()
        return f"caa:layer={layer}:without={category}:{digest[:16]}"

    def held_out(self, category: str) -> list[tuple[Request, Request]]:
        """The contrast pairs of every other category."""
        return [(pro, anti) for pro, anti in self.contrast if pro.category != category]


class ActivationSteering:
    """The intervention of ``act_`` conditions: a forward hook adding the category's vector."""

    packs = True

    def __init__(self, plan: SteeringPlan, host: Host) -> None:
        self.plan = plan
        self.host = host
        self._vectors: dict[str, SteeringVector] = {}
        self._recipes: dict[str, str] = {}

    def applies(self, request: Request) -> bool:
        return isinstance(request.condition.push, Activation)

    def cache_fields(self, request: Request) -> dict[str, Any]:
        return {"steering": {**request.condition.push.cache_fields(), "vector": self._recipe(request.category)}}

    def group(self, request: Request) -> tuple[object, ...]:
        return ("steered", _strength(request), request.category)

    def prepare(self, requests: Sequence[Request]) -> None:
        return None  # each category's vector is computed when its first batch needs it

    def applied(self, request: Request) -> AbstractContextManager[None]:
        return steered(self.host.model, self._vector(request.category), _strength(request))

    def _recipe(self, category: str) -> str:
        """The recipe of a category's vector, made once per category: every steered request's
        cache key holds it, and it hashes the contrast prompts."""
        if category not in self._recipes:
            self._recipes[category] = self.plan.recipe(category, self._layer)
        return self._recipes[category]

    @cached_property
    def _layer(self) -> int:
        plan = self.plan
        if plan.vector is not None:
            return plan.vector.layer
        return self.host.middle_layer if plan.layer is None else plan.layer

    def _vector(self, category: str) -> SteeringVector:
        """The vector the items of ``category`` are steered with, computed once per category."""
        if self.plan.vector is not None:
            return self.plan.vector
        if category not in self._vectors:
            host = self.host
            pairs = self.plan.held_out(category)
            pro = [host.encode(p) for p, _ in pairs]
            anti = [host.encode(a) for _, a in pairs]
            description = f"steering vector for {host.name}, {category} held out"
            with progress_bar(host.progress, description, len(pro) + len(anti), unit="prompt") as bar:
                self._vectors[category] = contrast_vector(
                    host.model, pro, anti, self._layer, self._recipe(category), bar
                )
        return self._vectors[category]


def _strength(request: Request) -> float:
    push = request.condition.push
    assert isinstance(push, Activation), f"{request.key.item_id} is not steered"
    return push.strength


@contextmanager
def steered(model: PreTrainedModel, vector: SteeringVector, strength: float) -> Iterator[None]:
    """While inside, the layer's output gets ``vector.delta(strength)`` added at every position;
    the hook is removed on the way out, whatever happens inside."""
    layer = decoder_layers(model)[vector.layer]
    delta = vector.delta(strength).to(device=model.device, dtype=model.dtype)

    def add(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    handle = layer.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def save_vector(vector: SteeringVector, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "direction": vector.direction.contiguous(),
            "layer": torch.tensor([vector.layer]),
            "norm": torch.tensor([vector.norm]),
        },
        str(path),
    )


def load_vector(path: Path) -> SteeringVector:
    """A vector file; anything else is an InputError naming it."""
    from safetensors.torch import load

    data = read_bytes(path, VECTOR_LIMIT, "--instrumental-vector-file")
    try:
        tensors = load(data)
        direction, layer, norm = tensors["direction"], int(tensors["layer"][0]), float(tensors["norm"][0])
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise InputError(f"--instrumental-vector-file: {path} is not a steering vector file ({exc})") from None
    if direction.dim() != 1 or not bool(direction.isfinite().all()) or not float(direction.norm()) > 0:
        raise InputError(
            f"--instrumental-vector-file: {path}: 'direction' must be one non-zero vector of finite numbers"
        )
    if not (math.isfinite(norm) and norm > 0):
        raise InputError(f"--instrumental-vector-file: {path}: 'norm' {norm} is not a positive finite number")
    if layer < 0:
        raise InputError(f"--instrumental-vector-file: {path}: 'layer' {layer} is not a decoder layer (0 or more)")
    digest = hashlib.sha256(data).hexdigest()
    return SteeringVector(layer, direction.float(), norm, f"file:{digest}")
