"""Batched generation vs one prompt at a time, on the same model, prompts and token budget.

    python bench/generation_speed.py [--prompts 16] [--max-new-tokens 128] [--batch-size 16]

"One at a time" is what the paper's reference implementation does: ``model.generate()`` per
prompt, greedy. "Batched" is this project's TransformersBackend (length-sorted, left-padded
batches; finished rows leave the batch). Both run the embedded SmolLM2-135M-Instruct on the
first scenarios of the suite under the three suffixes, in one process, one after the other, and
the script prints both throughputs and their ratio. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from pytest_instrumental.backends import embedded
from pytest_instrumental.backends.protocol import Request
from pytest_instrumental.backends.transformers import TransformersBackend, TransformersSettings
from pytest_instrumental.options import user_models_dir
from pytest_instrumental.scenarios import load_scenarios
from pytest_instrumental.suffixes import load_suffixes, select_suffixes, steer
from pytest_instrumental.verdicts import ItemKey


def suite_requests(count: int) -> list[Request]:
    suffixes = select_suffixes(load_suffixes(), ["baseline", "pro_ic", "anti_ic"])
    requests = []
    for scenario in load_scenarios():
        category = load_scenarios().category(scenario.category)
        for suffix in suffixes:
            key = ItemKey("smollm2-135m", suffix.name, scenario.id)
            requests.append(Request(key, category.slug, category.context, steer(scenario.prompt, suffix)))
    # Spread over categories and suffixes rather than the first scenarios of one category.
    step = max(1, len(requests) // count)
    return requests[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    # The default run's settings: the embedded model's budget and the default batch size.
    parser.add_argument("--max-new-tokens", type=int, default=embedded.DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models-dir", type=Path, default=user_models_dir())
    args = parser.parse_args()

    source = str(embedded.converted_dir(args.models_dir))
    settings = TransformersSettings(args.max_new_tokens, 4096, args.batch_size)
    backend = TransformersBackend("smollm2-135m", source, None, False, settings, identity="bench")
    requests = suite_requests(args.prompts)
    encoded = [backend.encode(r) for r in requests]
    model: Any = backend.model  # transformers types generate() too loosely for mypy
    tokenizer = backend.tokenizer

    start = time.perf_counter()
    single_tokens = 0
    with torch.inference_mode():
        for ids in encoded:
            output = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = output[0, len(ids) :].tolist()
            single_tokens += sum(1 for t in new if t not in (tokenizer.eos_token_id, tokenizer.pad_token_id))
    single_s = time.perf_counter() - start

    start = time.perf_counter()
    results = dict(backend.generate(requests))
    batched_s = time.perf_counter() - start
    # Re-tokenised text: the stop token is not in it, as it is not counted above either.
    batched_tokens = sum(
        len(tokenizer((g.response or "") + (g.thinking or ""), add_special_tokens=False)["input_ids"])
        for g in results.values()
    )

    print(
        f"model smollm2-135m ({backend.placement.device}, {torch.get_num_threads()} threads), "
        f"{len(requests)} prompts, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}"
    )
    for label, seconds, tokens in (("one at a time", single_s, single_tokens), ("batched", batched_s, batched_tokens)):
        print(f"{label:14} {seconds:7.1f} s  {len(requests) / seconds:6.3f} prompts/s  {tokens / seconds:6.1f} tok/s")
    print(f"ratio (batched / one at a time, prompts/s): {single_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
