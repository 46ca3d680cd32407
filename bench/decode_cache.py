"""A decoding step with the backend's preallocated KV cache against transformers' DynamicCache.

    python bench/decode_cache.py [--rows 16] [--steps 64] [--rounds 3] [--profile]

The default run's prompts (sorted by length, ``--rows`` of them from the middle), prefilled as
the backend prefills them, then ``--steps`` greedy decoding steps with either cache, alternating,
every row kept to the end. It prints the median milliseconds per step of each cache, and the
tokens of both (they must be the same). With ``--profile`` it prints ``torch.profiler``'s top
operators over the steps of each. DynamicCache appends each step's keys and values by
concatenating the whole cache of every layer (``aten::cat``); the preallocated cache writes the
new column in place. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_inspect import default_requests

from pytest_instrumental.backends import embedded
from pytest_instrumental.backends.kv_cache import LayerStates, PrefixStore, batch_cache
from pytest_instrumental.backends.transformers import TransformersBackend, _forward, _prefill
from pytest_instrumental.config import GenerationConfig
from pytest_instrumental.options import user_models_dir


def dynamic_cache(prompts: list[LayerStates]) -> Any:
    """What the backend built before: the prompts' caches left-padded into a DynamicCache."""
    from transformers import DynamicCache

    width = max(states[0][0].shape[-2] for states in prompts)
    layers = []
    for layer in range(len(prompts[0])):
        keys = torch.cat([F.pad(s[layer][0], (0, 0, width - s[layer][0].shape[-2], 0)) for s in prompts])
        values = torch.cat([F.pad(s[layer][1], (0, 0, width - s[layer][1].shape[-2], 0)) for s in prompts])
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


def decode(model: Any, prompts: list[list[int]], steps: int, preallocated: bool, profile: bool) -> tuple[float, Any]:
    """Median seconds per step, and the tokens."""
    store = PrefixStore([], 0)
    with torch.inference_mode():
        prefilled = [_prefill(model, p, 0, store) for p in prompts]
        states = [s for _, s in prefilled]
        cache = batch_cache(states, steps) if preallocated else dynamic_cache(states)
        width = max(len(p) for p in prompts)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = torch.tensor([[len(p) - 1] for p in prompts])
        logits = torch.cat([first for first, _ in prefilled])
        tokens, times = [], []
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
        if profiler is not None:
            profiler.start()
        for _ in range(steps):
            chosen = logits.argmax(dim=-1)
            tokens.append(chosen.tolist())
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=-1)
            positions = positions + 1
            start = time.perf_counter()
            logits = _forward(model, chosen[:, None], mask, positions, cache)
            times.append(time.perf_counter() - start)
        if profiler is not None:
            profiler.stop()
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))
    return statistics.median(times), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--models-dir", type=Path, default=user_models_dir())
    args = parser.parse_args()
    source = str(embedded.converted_dir(args.models_dir))
    backend = TransformersBackend(
        "smollm2-135m",
        source,
        None,
        False,
        "bench",
        generation=GenerationConfig(models_dir=args.models_dir),
        max_new_tokens=args.steps,
    )
    encoded = sorted((backend.encode(r) for r in default_requests(228)), key=len)
    start = (len(encoded) - args.rows) // 2
    prompts = encoded[start : start + args.rows]
    print(f"{len(prompts)} rows ({len(prompts[0])} to {len(prompts[-1])} tokens), {args.steps} steps")
    medians: dict[str, list[float]] = {"preallocated": [], "DynamicCache": []}
    tokens = {}
    for _ in range(args.rounds):
        for name in medians:
            seconds, tokens[name] = decode(backend.model, prompts, args.steps, name == "preallocated", args.profile)
            medians[name].append(seconds)
            print(f"{name:13} {1000 * seconds:6.1f} ms per step", flush=True)
    for name, values in medians.items():
        print(f"{name:13} median {1000 * statistics.median(values):6.1f} ms per step")
    print(f"same tokens: {tokens['preallocated'] == tokens['DynamicCache']}")


if __name__ == "__main__":
    main()
