"""KV caches for batched decoding (backends/transformers.py): one that decodes in place, and a
store of the prompt prefixes that prompts share.

transformers' ``DynamicLayer`` concatenates a layer's whole cache with each step's new column, so
every decoding step copies rows x width x layers of keys and values. ``PreallocatedLayer`` sizes
its buffers for the whole generation up front and writes each step's column in place: a step of
32 rows took 13% less on a 2-core CPU (``bench/decode_cache.py``, docs/performance.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, length, dim]


class PreallocatedLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers' own hook
    """One layer's keys and values [rows, heads, capacity, dim]; ``keys``/``values`` are views of
    the filled part, which is what attention reads."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.device = keys.device
        self.is_initialized = True
        self._keys, self._values, self.length = keys, values, length
        self._expose()

    def _expose(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._keys[:, :, : self.length], self._values[:, :, : self.length]
        self.keys, self.values = keys, values
        return keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError(f"the preallocated cache holds {self._keys.shape[-2]} positions, not {end}")
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        return self._expose()

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Row ``i`` becomes row ``indices[i]``, in place: only the rows that change places are
        copied (``fill_holes`` orders a batch so that few do), into the same buffers. Selecting
        into new buffers allocated and copied the whole cache each time a row finished."""
        order = indices.tolist()
        moved = [row for row, source in enumerate(order) if source != row]
        if moved:
            targets, sources = torch.tensor(moved, device=indices.device), indices[moved]
            for buffer in (self._keys, self._values):
                buffer[targets, :, : self.length] = buffer[sources, :, : self.length]  # gathered before written
        self._keys, self._values = self._keys[: len(order)], self._values[: len(order)]
        self._expose()


def fill_holes(kept: Sequence[int]) -> list[int]:
    """An order of a batch's ``kept`` rows (ascending) that moves the fewest: each stays in
    its place, except those beyond the smaller batch, which take the places of rows dropped."""
    size = len(kept)
    stay = set(kept)
    holes = [row for row in range(size) if row not in stay]
    tail = [row for row in kept if row >= size]
    order = list(range(size))
    for hole, row in zip(holes, tail, strict=True):
        order[hole] = row
    return order


def batch_cache(prompts: Sequence[LayerStates], new_tokens: int) -> Cache:
    """The prompts' caches left-padded into one batch (the padding is masked out), with room for
    ``new_tokens`` more positions per row."""
    width = max(states[0][0].shape[-2] for states in prompts)
    layers = []
    for layer in range(len(prompts[0])):
        first_keys, first_values = prompts[0][layer]
        rows, heads = len(prompts), first_keys.shape[1]
        keys = first_keys.new_zeros((rows, heads, width + new_tokens, first_keys.shape[-1]))
        values = first_values.new_zeros((rows, heads, width + new_tokens, first_values.shape[-1]))
        for row, states in enumerate(prompts):
            prompt_keys, prompt_values = states[layer]
            start = width - prompt_keys.shape[-2]
            keys[row, :, start:width] = prompt_keys[0]
            values[row, :, start:width] = prompt_values[0]
        layers.append(PreallocatedLayer(keys, values, width))
    return Cache(layers=[*layers])  # a list of the declared union


class PrefixStore:
    """The KV of prompt prefixes that several prompts start with (a scenario's conditions share
    its system prompt and prompt), computed once and kept until the last prompt that starts with
    it has taken it, within ``max_bytes``; beyond that a prefix is computed again for each prompt,
    which gives the same states."""

    def __init__(self, prefixes: Sequence[tuple[int, ...]], max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._users = Counter(prefixes)
        self._states: dict[tuple[int, ...], LayerStates] = {}
        self._bytes = 0
        self.computed = 0  # prefixes computed, for tests and benchmarks

    @property
    def held(self) -> list[tuple[int, ...]]:
        """The prefixes kept now."""
        return list(self._states)

    def take(self, prefix: tuple[int, ...], compute: Callable[[], LayerStates]) -> LayerStates:
        """``prefix``'s states, computed by ``compute`` unless they are kept."""
        self._users[prefix] -= 1
        states = self._states.get(prefix)
        if states is None:
            states = compute()
            self.computed += 1
            size = _size(states)
            if self._users[prefix] > 0 and self._bytes + size <= self.max_bytes:
                self._states[prefix] = states
                self._bytes += size
        if self._users[prefix] <= 0 and prefix in self._states:
            self._bytes -= _size(self._states.pop(prefix))
        return states


def _size(states: LayerStates) -> int:
    return sum(t.numel() * t.element_size() for pair in states for t in pair)


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading tokens two token sequences share."""
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length
