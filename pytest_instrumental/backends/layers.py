"""A decoder's layers, where steering and ablation hook into a local model's residual stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_instrumental.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def decoder_layers(model: PreTrainedModel) -> Sequence[Any]:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise InputError(f"activation steering: {type(model).__name__} has no model.layers to hook")
    return list(layers)
