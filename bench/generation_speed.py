"""In-process generation paths on the same real model, prompts and token budget.

    python bench/generation_speed.py [--prompts 16] [--max-new-tokens 128] [--batch-size 32]
                                     [--paths single,batched,unpacked,generate_batch] [--threads N]

"single" is what the paper's reference implementation does: ``model.generate()`` per prompt,
greedy. "batched" is this project's TransformersBackend (length-sorted batches, each prompt
prefilled alone, finished rows leave the batch, linear layers on oneDNN's packed weights where the
backend packs them). "unpacked" is the batched path on torch's default CPU matmul instead
(backends/packed_linear.py). "generate_batch" is transformers' continuous
batching (``model.generate_batch``, paged KV cache), greedy. All run the embedded
SmolLM2-135M-Instruct on suite prompts spread over categories and suffixes, in one process, one
after the other; the script prints each throughput, its ratio to the first path, and how many
rows produced the same tokens as the first path. ``batched:N`` (and ``unpacked:N``) is the batched
path at batch size N (``--paths batched:32,batched:64,batched:32,batched:64`` compares batch
sizes, alternating).
It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from pytest_instrumental.backends import embedded
from pytest_instrumental.backends.transformers import CPU_BATCH_SIZE, TransformersBackend
from pytest_instrumental.config import EMBEDDED_MAX_NEW_TOKENS
from pytest_instrumental.config import GenerationConfig as GenerationSettings
from pytest_instrumental.options import user_models_dir
from pytest_instrumental.vocabulary.conditions import Condition, SuffixPush
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes, select_suffixes


def suite_requests(count: int) -> list[Request]:
    suffixes = select_suffixes(load_suffixes(), ["baseline", "pro_ic", "anti_ic"])
    requests = []
    for scenario in load_scenarios():
        category = load_scenarios().category(scenario.category)
        for suffix in suffixes:
            key = ItemKey("smollm2-135m", suffix.name, scenario.id)
            condition = Condition(SuffixPush(suffix))
            requests.append(Request(key, category.slug, category.context, scenario.prompt, condition))
    # Spread over categories and suffixes rather than the first scenarios of one category.
    step = max(1, len(requests) // count)
    return requests[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    # The default run's settings: the embedded model's budget and the default batch size.
    parser.add_argument("--max-new-tokens", type=int, default=EMBEDDED_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int, default=CPU_BATCH_SIZE)
    parser.add_argument("--models-dir", type=Path, default=user_models_dir())
    parser.add_argument("--paths", default="single,batched,generate_batch")
    parser.add_argument("--threads", type=int, help="torch's CPU threads, as --instrumental-threads sets them")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    source = str(embedded.converted_dir(args.models_dir))
    generation = GenerationSettings(models_dir=args.models_dir, batch_size=args.batch_size)
    backend = TransformersBackend(
        "smollm2-135m", source, None, False, "bench", generation=generation, max_new_tokens=args.max_new_tokens
    )
    requests = suite_requests(args.prompts)
    encoded = [backend.encode(r) for r in requests]
    model: Any = backend.model  # transformers types generate() too loosely for mypy
    tokenizer = backend.tokenizer

    print(
        f"model smollm2-135m ({backend.placement.device}, {torch.get_num_threads()} threads), "
        f"{len(requests)} prompts, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}"
    )
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    first: tuple[float, list[list[int]]] | None = None
    for path in args.paths.split(","):
        start = time.perf_counter()
        if path == "single":
            outputs = [single(model, ids, args.max_new_tokens, tokenizer.pad_token_id) for ids in encoded]
        elif path.partition(":")[0] in ("batched", "unpacked"):
            size = int(path.partition(":")[2] or args.batch_size)
            outputs = batched(backend, encoded, size, args.max_new_tokens, packed=path.startswith("batched"))
        elif path == "generate_batch":
            outputs = continuous(model, encoded, args.max_new_tokens, tokenizer)
        else:
            raise SystemExit(f"unknown path {path!r}")
        seconds = time.perf_counter() - start
        outputs = [[t for t in row if t not in stops] for row in outputs]
        tokens = sum(len(row) for row in outputs)
        note = ""
        if first is None:
            first = (seconds, outputs)
        else:
            same = sum(a == b for a, b in zip(first[1], outputs, strict=True))
            note = f"  {first[0] / seconds:.2f}x the first path; same tokens: {same}/{len(outputs)} rows"
        print(
            f"{path:15} {seconds:7.1f} s  {len(requests) / seconds:6.3f} prompts/s  {tokens / seconds:6.1f} tok/s{note}"
        )


def single(model: Any, ids: list[int], max_new_tokens: int, pad_id: int) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return list(output[0, len(ids) :].tolist())


def batched(
    backend: TransformersBackend, encoded: list[list[int]], size: int, max_new_tokens: int, packed: bool
) -> list[list[int]]:
    from pytest_instrumental.backends.packed_linear import packed_linears
    from pytest_instrumental.backends.transformers import generate_tokens

    layers = backend._packed if packed else None
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: dict[int, list[int]] = {}
    with packed_linears(backend.model, layers) if layers is not None else nullcontext():
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            prompts = [encoded[i] for i in chunk]
            results = generate_tokens(backend.model, prompts, backend._stop_ids(), backend._pad_id(), max_new_tokens)
            outputs.update({i: tokens for i, (tokens, _) in zip(chunk, results, strict=True)})
    return [outputs[i] for i in range(len(encoded))]


def continuous(model: Any, encoded: list[list[int]], max_new_tokens: int, tokenizer: Any) -> list[list[int]]:
    from transformers import GenerationConfig

    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    results = model.generate_batch(encoded, generation_config=config)
    ordered = sorted(results.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
    return [list(r.generated_tokens) for r in ordered]


if __name__ == "__main__":
    main()
