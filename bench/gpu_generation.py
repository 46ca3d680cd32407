"""In-process generation at scale: this project's decoding loop against transformers' continuous
batching (``model.generate_batch``), on a randomly initialised model with a real architecture.

    python bench/gpu_generation.py [--config bench/configs/qwen3-4b.json] [--prompts 64]
                                   [--new-tokens 1024] [--paths loop,generate_batch]

Nothing is downloaded: the model is built from the config file (Qwen3-4B's architecture by
default; ``bench/configs/tiny.json`` for a quick run on a CPU) with random weights, in bf16 on a
GPU (fp32 on a CPU). The prompts are random token ids with the lengths of the suite's rendered
prompts (the embedded model's tokenizer, when installed; else a character count / 4). EOS is
ignored, so every row generates exactly ``--new-tokens`` tokens and both paths do the same work.

For each path it prints wall time and generated tokens per second, and how many rows produced
the same tokens as the first path. On a GPU it also prints the HBM-bandwidth floor: every decode
step reads the weights once and the KV cache of every row, so with all prompts decoding together
the step cannot be faster than (weight bytes + KV bytes) / bandwidth. It measures; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
# Peak HBM bandwidth, GB/s, from the vendors' data sheets, by a substring of the device name.
BANDWIDTH_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "A100-SXM4-80GB": 2039.0, "L40S": 864.0}


def suite_lengths(count: int) -> list[int]:
    """Token lengths of ``count`` rendered suite prompts, spread over categories and suffixes."""
    from pytest_instrumental.vocabulary.conditions import steer
    from pytest_instrumental.vocabulary.scenarios import load_scenarios
    from pytest_instrumental.vocabulary.suffixes import load_suffixes, select_suffixes

    scenarios = load_scenarios()
    suffixes = select_suffixes(load_suffixes(), ["baseline", "pro_ic", "anti_ic"])
    texts = [
        scenarios.category(s.category).context + "\n\n" + steer(s.prompt, suffix)
        for s in scenarios
        for suffix in suffixes
    ]
    counter = _token_counter()
    lengths = [counter(t) for t in texts]
    return [lengths[(i * len(lengths)) // count] for i in range(count)]


def _token_counter() -> Any:
    try:
        from transformers import AutoTokenizer

        from pytest_instrumental.backends import embedded
        from pytest_instrumental.options import user_models_dir

        tokenizer = AutoTokenizer.from_pretrained(embedded.converted_dir(user_models_dir()))
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 10  # + chat markup
    except Exception:  # no embedded model here: an estimate is enough for lengths
        return lambda text: len(text) // 4 + 10


def build_model(config_path: Path, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.loads(config_path.read_text(encoding="utf-8")))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    return model.eval()


def run_loop(model: Any, prompts: list[list[int]], new_tokens: int, batch_size: int) -> list[list[int]]:
    from pytest_instrumental.backends.transformers import generate_tokens

    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        outputs += [tokens for tokens, _ in generate_tokens(model, chunk, set(), 0, new_tokens)]
    return outputs


def run_generate_batch(model: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from transformers import GenerationConfig

    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    results = model.generate_batch(prompts, generation_config=config)
    ordered = sorted(results.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
    return [list(r.generated_tokens) for r in ordered]


def hbm_floor_tokens_per_s(model: Any, lengths: list[int], new_tokens: int, bandwidth_gbs: float) -> float:
    """Tokens per second if each decode step only had to read the weights and every row's KV cache."""
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    element = next(model.parameters()).element_size()
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * element
    kv_read = kv_per_token * sum(sum(length + step for length in lengths) for step in range(new_tokens))
    seconds = (new_tokens * weight_bytes + kv_read) / (bandwidth_gbs * 1e9)
    return float(len(lengths) * new_tokens / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=BENCH / "configs" / "qwen3-4b.json")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=0, help="the loop's batch (default: all prompts at once)")
    parser.add_argument("--paths", default="loop,generate_batch")
    parser.add_argument("--bandwidth-gbs", type=float, default=0.0, help="HBM bandwidth (default: by GPU name)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model = build_model(args.config, device, dtype)
    lengths = suite_lengths(args.prompts)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]
    name = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"{args.config.name} (random weights, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters), "
        f"{str(dtype).removeprefix('torch.')}, {name}; {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens, "
        f"{args.new_tokens} new tokens each, EOS ignored"
    )
    first: list[list[int]] | None = None
    for path in args.paths.split(","):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if path == "loop":
            batch = args.batch_size or len(prompts)
            outputs = run_loop(model, prompts, args.new_tokens, batch)
            label = f"loop (this project's, batch {batch})"
        elif path == "generate_batch":
            outputs = run_generate_batch(model, prompts, args.new_tokens)
            label = "generate_batch (continuous batching)"
        else:
            raise SystemExit(f"unknown path {path!r}")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokens = sum(len(o) for o in outputs)
        matching = 0 if first is None else sum(a == b for a, b in zip(first, outputs, strict=True))
        same = "" if first is None else f"  same tokens as the first path: {matching}/{len(outputs)} rows"
        first = first or outputs
        print(f"{label:42} {seconds:8.1f} s  {tokens / seconds:9.1f} tok/s{same}")
    bandwidth = args.bandwidth_gbs or next((v for k, v in BANDWIDTH_GBS.items() if cuda and k in name), 0.0)
    if bandwidth:
        floor = hbm_floor_tokens_per_s(model, lengths, args.new_tokens, bandwidth)
        print(f"HBM floor at {bandwidth:g} GB/s (all prompts decoding together): at most {floor:9.1f} tok/s")


if __name__ == "__main__":
    main()
