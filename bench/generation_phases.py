"""Where the backend's generation time goes: prefill, decoding steps, and the rest.

    python bench/generation_phases.py [--prompts 228] [--max-new-tokens 128] [--runs packed:64,unpacked:64]

The default run's prompts (76 scenarios x baseline, pro_ic, anti_ic, spread evenly when
``--prompts`` is smaller) through ``TransformersBackend.generate``, as a run generates them
(shared prefixes, batches, finished rows leaving), with the embedded SmolLM2-135M-Instruct. Each
run is ``packed:N`` (the linear layers on oneDNN's packed weights, as the backend computes on a
CPU) or ``unpacked:N`` (torch's default matmul), at batch size N; runs go one after the other in
one process, each with the model loaded afresh. For each it prints the seconds spent
prefilling (and the tokens prefilled), in decoding steps (and the row-steps they computed), in the
rest (everything else ``generate`` does: tokenising, batching, packing the weights, dropping
finished rows from the cache), the whole, and how many answers are the same text as the first
run's. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_inspect import default_requests

from pytest_instrumental.backends import embedded, packed_linear
from pytest_instrumental.backends import transformers as backend_module
from pytest_instrumental.config import EMBEDDED_MAX_NEW_TOKENS, GenerationConfig
from pytest_instrumental.options import user_models_dir


class Phases:
    """The backend's prefill and decoding-step functions, timed."""

    def __init__(self) -> None:
        self.prefill = self.decode = 0.0
        self.prefilled = self.row_steps = 0
        self._prefilling = False
        self._prefill, self._extend, self._forward = (
            backend_module._prefill,
            backend_module._extend,
            backend_module._forward,
        )

    def timed_prefill(self, *args: Any) -> Any:
        start, self._prefilling = time.perf_counter(), True
        try:
            return self._prefill(*args)
        finally:
            self.prefill += time.perf_counter() - start
            self._prefilling = False

    def counted_extend(self, model: Any, tokens: Any, *args: Any) -> Any:
        self.prefilled += len(tokens)
        return self._extend(model, tokens, *args)

    def timed_forward(self, model: Any, input_ids: Any, *args: Any) -> Any:
        if self._prefilling:  # timed as prefill
            return self._forward(model, input_ids, *args)
        start = time.perf_counter()
        try:
            return self._forward(model, input_ids, *args)
        finally:
            self.decode += time.perf_counter() - start
            self.row_steps += input_ids.shape[0]

    def patches(self) -> Any:
        return mock.patch.multiple(
            backend_module, _prefill=self.timed_prefill, _extend=self.counted_extend, _forward=self.timed_forward
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=228)
    parser.add_argument("--max-new-tokens", type=int, default=EMBEDDED_MAX_NEW_TOKENS)
    parser.add_argument("--runs", default="packed:64,unpacked:64")
    parser.add_argument("--models-dir", type=Path, default=user_models_dir())
    args = parser.parse_args()
    source = str(embedded.converted_dir(args.models_dir))
    requests = default_requests(args.prompts)
    print(f"{len(requests)} prompts, {args.max_new_tokens} new tokens, greedy")
    first: list[str] | None = None
    for run in args.runs.split(","):
        kernels, _, size = run.partition(":")
        if kernels not in ("packed", "unpacked") or not size.isdigit():
            raise SystemExit(f"a run is packed:N or unpacked:N, not {run!r}")
        generation = GenerationConfig(models_dir=args.models_dir, batch_size=int(size))
        backend = backend_module.TransformersBackend(
            "smollm2-135m", source, None, False, "bench", generation=generation, max_new_tokens=args.max_new_tokens
        )
        backend.model  # loaded before the clock starts, as for every run  # noqa: B018
        phases = Phases()
        unpacked = mock.patch.object(packed_linear, "can_pack", return_value=False)
        with phases.patches(), unpacked if kernels == "unpacked" else nullcontext():
            start = time.perf_counter()
            answers = dict(backend.generate(requests))
            whole = time.perf_counter() - start
        backend.close()
        texts = [answers[i].response or "" for i in range(len(requests))]
        first = first or texts
        same = sum(a == b for a, b in zip(first, texts, strict=True))
        rest = whole - phases.prefill - phases.decode
        print(
            f"{run:12} prefill {phases.prefill:6.1f} s ({phases.prefilled} tokens)  "
            f"decoding {phases.decode:6.1f} s ({phases.row_steps} row-steps)  rest {rest:5.1f} s  "
            f"whole {whole:6.1f} s  same answers as the first run: {same}/{len(texts)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
