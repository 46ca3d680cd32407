"""Linear layers with weights prepacked for oneDNN, for float32 generation on a CPU.

torch's default CPU matmul (MKL's sgemm on an unpacked ``[out, in]`` weight) is slow at the
row counts decoding has: a step of 64 rows is seven small products per layer and one large
output projection. oneDNN with the weight reordered once into its blocked layout (what
torch's own compiler does for CPU linears, ``torch.ops.mkldnn._linear_pointwise``) took the
default run's generation from 278.1 to 208.3 s on a 2-core CPU (``bench/generation_phases.py``,
docs/performance.md), with 227 of its 228 answers the same text: the same float32 arithmetic in
another order.

The packed modules replace a model's ``nn.Linear`` children only while ``packed_linears`` is
entered, so training, adapters (which wrap ``nn.Linear``) and everything else see the model as
loaded; steering and ablation hooks sit on the decoder layers and are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import torch

WEIGHTS_SHARE_OF_MEMORY = 0.5  # a packed copy of the weights is made only if it leaves the rest for KV caches


class PackedLinear(torch.nn.Module):
    """An ``nn.Linear``'s computation with its weight in oneDNN's layout (a copy: the original
    stays where it is)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features = linear.out_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # 2-D, as torch's compiler calls the op
        flat = inputs.reshape(-1, inputs.shape[-1])
        outputs: torch.Tensor = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return outputs.reshape(*inputs.shape[:-1], self.out_features)


def can_pack(model: torch.nn.Module) -> bool:
    """Whether ``model``'s linears can be packed: a float32 model on the CPU, a torch with
    oneDNN's linear ops, and memory for a second copy of the weights."""
    parameters = list(model.parameters())
    if not parameters or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in parameters):
        return False
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")):
        return False
    weights = sum(p.numel() * p.element_size() for p in parameters)
    return weights <= available_memory() * WEIGHTS_SHARE_OF_MEMORY


def available_memory() -> int:
    """Bytes of memory available now (free, and what the system can reclaim from its caches)."""
    return int(psutil.virtual_memory().available)


def pack(model: torch.nn.Module) -> dict[tuple[str, str], PackedLinear]:
    """A packed copy of each of ``model``'s ``nn.Linear`` layers, keyed by (parent, attribute)."""
    packed = {}
    with torch.inference_mode():
        for parent_name, parent in model.named_modules():
            for name, child in parent.named_children():
                if type(child) is torch.nn.Linear:
                    packed[parent_name, name] = PackedLinear(child)
    return packed


@contextmanager
def packed_linears(model: torch.nn.Module, packed: dict[tuple[str, str], PackedLinear]) -> Iterator[None]:
    """``model`` computes with the ``packed`` layers (from ``pack``) until the block ends,
    whatever happens in it."""
    originals = []
    try:
        for (parent_name, name), layer in packed.items():
            parent = model.get_submodule(parent_name)
            originals.append((parent, name, getattr(parent, name)))
            setattr(parent, name, layer)
        yield
    finally:
        for parent, name, original in originals:
            setattr(parent, name, original)
