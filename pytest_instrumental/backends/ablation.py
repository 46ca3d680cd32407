"""Directional ablation: the attack someone holding the weights has on the developer's instruction.

Arditi et al. (2024) found refusal mediated by one direction of the residual stream, and removed
it by projecting that direction out everywhere. Here the direction is the one through which a
defence acts: the mean difference of the residual stream at the last prompt token between the
scenarios' prompts with the defence's text in the system prompt and the same prompts without it,
after one decoder layer (``--instrumental-vector-layer``, else the middle one). An undefended item
loses the anti_ic text's direction: what the model would heed if a developer gave that instruction.

``ablate`` projects the direction out of every write to the residual stream (the embeddings, each
attention's and each MLP's output), so no sublayer reads it, and has the same effect baked into the
weights (checkpoints.py), the form an engine serves; ``ablate:L`` measures it after layer L and
projects it out there only. As for steering vectors, no leakage: a category's items lose the
direction measured on the other categories' scenarios.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.backends.checkpoints import orthogonalise
from pytest_instrumental.backends.layers import decoder_layers
from pytest_instrumental.backends.protocol import Host
from pytest_instrumental.errors import InputError
from pytest_instrumental.progress import ProgressFactory, progress_bar
from pytest_instrumental.vocabulary.conditions import Ablation, Suffix
from pytest_instrumental.vocabulary.request import Request

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class AblationPlan:
    """What a local model's ablations are measured from: ``prompts``, every scenario's unsuffixed,
    undefended request; ``instruction``, the text an undefended item loses the direction of
    (anti_ic's); ``layer``, where ``ablate`` measures (None: the middle layer)."""

    layer: int | None
    instruction: str
    prompts: tuple[Request, ...]

    def text_of(self, request: Request) -> str:
        """The instruction whose direction ``request`` loses: its defence, else anti_ic's text."""
        return request.condition.defense_text or self.instruction

    def held_out(self, category: str) -> list[Request]:
        """The prompts of every other category."""
        return [prompt for prompt in self.prompts if prompt.category != category]

    def recipe(self, text: str, category: str, layer: int) -> str:
        """What determines the direction a category's items lose after ``layer``, for cache keys."""
        measured = [[p.context, p.steered_prompt] for p in self.held_out(category)]
        digest = hashlib.sha256(json.dumps([text, measured], ensure_ascii=False).encode("utf-8")).hexdigest()
        return f"ablate:layer={layer}:without={category}:{digest[:16]}"


class DirectionalAblation:
    """The intervention of ``ablate`` conditions: the defence's direction projected out."""

    packs = True

    def __init__(self, plan: AblationPlan, host: Host) -> None:
        self.plan = plan
        self.host = host

    def applies(self, request: Request) -> bool:
        return isinstance(request.condition.push, Ablation)

    def cache_fields(self, request: Request) -> dict[str, Any]:
        recipe = self.plan.recipe(self.plan.text_of(request), request.category, self._measured_at(request))
        removed_from = "every residual write" if _ablation(request).layer is None else "the layer's output"
        return {"ablation": {**request.condition.push.cache_fields(), "direction": recipe, "from": removed_from}}

    def group(self, request: Request) -> tuple[object, ...]:
        return ("ablated", request.condition.push.name, self.plan.text_of(request), request.category)

    def prepare(self, requests: Sequence[Request]) -> None:
        return None  # each direction is measured when its first batch needs it

    def applied(self, request: Request) -> AbstractContextManager[None]:
        text, layer = self.plan.text_of(request), self._measured_at(request)
        direction = self._directions.direction(text, request.category, layer)
        return ablated(self.host.model, direction, _ablation(request).layer)

    def bake(self, request: Request, model: Any) -> Any:
        """The weights orthogonalised against the direction ``applied(request)`` projects out."""
        assert _ablation(request).layer is None, "ablate:LAYER has no checkpoint form (its push refuses a server)"
        text, layer = self.plan.text_of(request), self._measured_at(request)
        orthogonalise(model, self._directions.direction(text, request.category, layer))
        return model

    def adapter(self, request: Request) -> Path | None:
        return None

    def _measured_at(self, request: Request) -> int:
        """The layer the direction is measured after: the ablation's own, or for every layer
        ``--instrumental-vector-layer``, else the middle one."""
        layer = _ablation(request).layer
        if layer is not None:
            return layer
        return self.host.middle_layer if self.plan.layer is None else self.plan.layer

    @cached_property
    def _directions(self) -> Directions:
        host = self.host
        return Directions(host.model, host.encode, self.plan, host.progress, host.name)


def _ablation(request: Request) -> Ablation:
    push = request.condition.push
    assert isinstance(push, Ablation), f"{request.key.item_id} is not ablated"
    return push


class Directions:
    """The directions a model's ablations remove, each computed once; the residual states they
    are means of, once per prompt (every category's direction shares most of its prompts)."""

    def __init__(
        self,
        model: PreTrainedModel,
        encode: Callable[[Request], list[int]],
        plan: AblationPlan,
        progress: ProgressFactory | None = None,
        name: str = "",
    ) -> None:
        self._model = model
        self._encode = encode
        self._plan = plan
        self._progress = progress
        self._name = name
        self._states: dict[tuple[int, ...], torch.Tensor] = {}
        self._directions: dict[tuple[str, str, int], torch.Tensor] = {}

    def direction(self, text: str, category: str, layer: int) -> torch.Tensor:
        """mean(states with ``text`` in the system prompt) - mean(states without), after ``layer``."""
        key = (text, category, layer)
        if key not in self._directions:
            import torch

            without = self._plan.held_out(category)
            if not without:
                raise InputError(f"--instrumental-attack ablate: no other category than {category} to measure on")
            defense = Suffix("ablated", text)  # its text is what counts
            with_text = [replace(prompt, condition=replace(prompt.condition, defense=defense)) for prompt in without]
            prompts = {tuple(self._encode(p)): p for p in [*with_text, *without]}
            todo = [ids for ids in prompts if ids not in self._states]
            if todo:
                description = f"ablation direction for {self._name}, {category} held out"
                with progress_bar(self._progress, description, len(todo), unit="prompt") as bar:
                    for ids in todo:
                        self._states[ids] = last_token_states(self._model, ids)
                        bar.update(1)
            defended = torch.stack([self._state(p)[layer] for p in with_text])
            undefended = torch.stack([self._state(p)[layer] for p in without])
            self._directions[key] = defended.mean(dim=0) - undefended.mean(dim=0)
        return self._directions[key]

    def _state(self, request: Request) -> torch.Tensor:
        ids = tuple(self._encode(request))
        if ids not in self._states:
            self._states[ids] = last_token_states(self._model, ids)
        return self._states[ids]


def last_token_states(model: PreTrainedModel, prompt: Sequence[int]) -> torch.Tensor:
    """The output of every decoder layer at the prompt's last token: [layers, hidden]."""
    import torch

    states: list[torch.Tensor] = []

    def capture(module: Any, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        states.append(hidden[0, -1].float().cpu())

    handles = [layer.register_forward_hook(capture) for layer in decoder_layers(model)]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([list(prompt)], device=model.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(states)


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``hidden`` without its component along the unit vector ``unit``, at every position."""
    unit = unit.to(device=hidden.device, dtype=hidden.dtype)  # a no-op but where layers span devices
    return hidden - (hidden @ unit).unsqueeze(-1) * unit


@contextmanager
def ablated(model: PreTrainedModel, direction: torch.Tensor, layer: int | None) -> Iterator[None]:
    """While inside, ``direction`` is projected out: with ``layer`` None, out of every write to the
    residual stream (the embeddings, and each layer's attention and MLP outputs), as Arditi et al.
    (2024) define directional ablation and as weights orthogonalised against it compute, so no
    sublayer ever reads it; with ``layer``, out of that decoder layer's output only. The hooks are
    removed on the way out, whatever happens inside."""
    layers = decoder_layers(model)
    unit = (direction / direction.norm()).to(device=model.device, dtype=model.dtype)

    def remove(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (project_out(output[0], unit), *output[1:])
        return project_out(output, unit)

    def remove_from_input(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (project_out(args[0], unit), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": project_out(kwargs["hidden_states"], unit)}

    # every write: each layer's attention and MLP (the layer's output where it has neither)
    hooked = [w for block in layers for w in _writes(block)] if layer is None else [layers[layer]]
    handles = []
    try:
        if layer is None:  # the embeddings, as the first layer takes them in
            handles.append(layers[0].register_forward_pre_hook(remove_from_input, with_kwargs=True))
        handles += [module.register_forward_hook(remove) for module in hooked]
        yield
    finally:
        for handle in handles:
            handle.remove()


def _writes(block: Any) -> list[Any]:
    """The sublayers of a decoder layer that add to the residual stream."""
    writes = [getattr(block, name, None) for name in ("self_attn", "mlp")]
    return [w for w in writes if w is not None] if all(w is not None for w in writes) else [block]
