"""This plugin's generation against the peer a user would pick instead: Inspect AI's ``hf/`` provider.

    python bench/peer_inspect.py [--prompts 228] [--max-new-tokens 128] [--batch-size N]
                                 [--inspect-batch-size 16] [--rounds 2]

The same prompts (the default run's: every scenario under baseline, pro_ic and anti_ic, the category
context as system message, the steered prompt as user message), the same converted
SmolLM2-135M-Instruct weights, the same budget, greedy (Inspect: ``do_sample=False``; its batch is
``max_connections``, at 16, where the issue's measurement found it fastest; this plugin at its own
default, at most 64 rows on a CPU, unless ``--batch-size`` says), one after the other in one
process, alternating A B A B, each run loading the model afresh. It prints each run's wall time, the
ratio of the medians, and how many answers the two produced alike (after stripping whitespace). It
measures; it asserts nothing. Without inspect-ai installed (the optional extra: ``pip install
'pytest-instrumental[inspect]'``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pytest_instrumental.backends import embedded
from pytest_instrumental.backends.transformers import TransformersBackend
from pytest_instrumental.config import GenerationConfig
from pytest_instrumental.options import user_models_dir
from pytest_instrumental.plan import plan_requests
from pytest_instrumental.vocabulary.conditions import DEFAULT_SUFFIXES, SuffixPush, run_conditions
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes, select_suffixes


def default_requests(count: int) -> list[Request]:
    """The default run's requests (76 scenarios x 3 suffixes), the first ``count`` of them spread evenly."""
    suffixes = select_suffixes(load_suffixes(), list(DEFAULT_SUFFIXES))
    requests = plan_requests(["smollm2-135m"], run_conditions([SuffixPush(s) for s in suffixes]), load_scenarios())
    step = max(1, len(requests) // count)
    return requests[::step][:count]


def ours(source: str, models_dir: Path, requests: list[Request], budget: int, batch: int | None) -> list[str]:
    generation = GenerationConfig(models_dir=models_dir, batch_size=batch)
    backend = TransformersBackend(
        "smollm2-135m", source, None, False, "bench", generation=generation, max_new_tokens=budget
    )
    try:
        answers = dict(backend.generate(requests))
        return [answers[i].response or "" for i in range(len(requests))]
    finally:
        backend.close()


def inspect_run(source: str, requests: list[Request], budget: int, batch: int, log_dir: str) -> list[str]:
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser
    from inspect_ai.solver import generate

    samples = [
        Sample(input=[ChatMessageSystem(content=r.system), ChatMessageUser(content=r.steered_prompt)], id=str(index))
        for index, r in enumerate(requests)
    ]
    task = Task(dataset=MemoryDataset(samples), solver=generate())
    (log,) = inspect_eval(
        task,
        model="hf/local",
        model_args={"model_path": source, "tokenizer_path": source, "do_sample": False, "device": "cpu"},
        max_tokens=budget,
        max_connections=batch,
        display="none",
        log_dir=log_dir,
    )
    completions = {str(s.id): s.output.completion for s in log.samples or []}
    return [completions.get(str(index), "") for index in range(len(requests))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=228)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, help="this plugin's batch (default: its own, as a run sizes it)")
    parser.add_argument(
        "--inspect-batch-size", type=int, default=16, help="Inspect's max_connections (16: it was no faster at 32)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, default=user_models_dir())
    args = parser.parse_args()
    # The weights are local: no hub lookups (offline, each would retry for 40 s and count as Inspect's time).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import inspect_ai
    except ImportError:
        print("inspect-ai is not installed (pip install 'pytest-instrumental[inspect]'): nothing to compare with")
        return
    source = str(embedded.converted_dir(args.models_dir))
    requests = default_requests(args.prompts)
    print(
        f"{len(requests)} prompts, {args.max_new_tokens} new tokens, greedy, batch {args.batch_size or 'default'} "
        f"(Inspect {args.inspect_batch_size}); "
        f"inspect-ai {inspect_ai.__version__}"
    )
    times: dict[str, list[float]] = {"pytest-instrumental": [], "inspect hf/": []}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            for name in times:
                start = time.perf_counter()
                if name == "pytest-instrumental":
                    got = ours(source, args.models_dir, requests, args.max_new_tokens, args.batch_size)
                else:
                    got = inspect_run(source, requests, args.max_new_tokens, args.inspect_batch_size, log_dir)
                times[name].append(time.perf_counter() - start)
                answers[name] = got
                print(f"{name:20} {times[name][-1]:7.1f} s", flush=True)
    same = sum(a.strip() == b.strip() for a, b in zip(*answers.values(), strict=True))
    mine, theirs = (statistics.median(t) for t in times.values())
    print(f"median: pytest-instrumental {mine:.1f} s, inspect hf/ {theirs:.1f} s: {theirs / mine:.2f}x")
    print(f"same answers: {same}/{len(requests)}")


if __name__ == "__main__":
    main()
