"""The benchmark scripts run (on a tiny configuration here); what they measure is read by people."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_lines(script: str, *args: str) -> list[str]:
    """What ``bench/SCRIPT`` prints with ``args``, line by line (it must exit 0)."""
    command = [sys.executable, str(BENCH / script), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=600).stdout.splitlines()


@pytest.mark.slow
def test_the_gpu_generation_benchmark_runs_on_a_tiny_config() -> None:
    args = ["--config", str(BENCH / "configs" / "tiny.json"), "--prompts", "4", "--new-tokens", "6"]
    lines = bench_lines("gpu_generation.py", *args, "--bandwidth-gbs", "100")
    assert lines[0].startswith("tiny.json (random weights, ")
    assert lines[1].startswith("loop (this project's, batch 4)")
    assert lines[2].startswith("generate_batch (continuous batching)")
    assert lines[2].endswith("same tokens as the first path: 4/4 rows")  # both paths greedy, EOS ignored
    assert lines[3].startswith("HBM floor at 100 GB/s")


@pytest.mark.slow
def test_the_peer_benchmark_compares_with_inspect_or_says_it_is_not_installed(smollm2_dir: Path) -> None:
    import importlib.util

    args = ["--prompts", "2", "--max-new-tokens", "3", "--rounds", "1"]
    lines = bench_lines("peer_inspect.py", *args)
    if importlib.util.find_spec("inspect_ai") is None:  # an optional peer, not a dependency
        assert lines == [
            "inspect-ai is not installed (pip install 'pytest-instrumental[inspect]'): nothing to compare with"
        ]
    else:
        assert lines[0].startswith("2 prompts, 3 new tokens, greedy, batch default (Inspect 16); inspect-ai ")
        assert lines[-1] == "same answers: 2/2"


@pytest.mark.slow
def test_the_generation_benchmark_compares_paths_and_batch_sizes(smollm2_dir: Path) -> None:
    paths = "single,batched:1,batched:2,unpacked:2"
    args = ["--prompts", "3", "--max-new-tokens", "4", "--paths", paths, "--threads", "1"]
    lines = bench_lines("generation_speed.py", *args)
    assert lines[0].startswith("model smollm2-135m (cpu, 1 threads), 3 prompts, max_new_tokens 4, batch size 64")
    assert [line.split()[0] for line in lines[1:]] == paths.split(",")
    assert all("x the first path; same tokens: " in line and line.endswith("/3 rows") for line in lines[2:])


@pytest.mark.slow
def test_the_phases_benchmark_splits_the_backends_time_with_packed_and_unpacked_linears(smollm2_dir: Path) -> None:
    args = ["--prompts", "3", "--max-new-tokens", "3", "--runs", "packed:2,unpacked:3"]
    lines = bench_lines("generation_phases.py", *args)
    assert lines[0] == "3 prompts, 3 new tokens, greedy"
    assert [line.split()[0] for line in lines[1:]] == ["packed:2", "unpacked:3"]
    assert all(" row-steps)  rest " in line for line in lines[1:])
    assert lines[1].endswith("same answers as the first run: 3/3")


@pytest.mark.slow
def test_the_decode_cache_benchmark_compares_both_caches_on_the_same_tokens(smollm2_dir: Path) -> None:
    args = ["--rows", "2", "--steps", "3", "--rounds", "1"]
    lines = bench_lines("decode_cache.py", *args)
    assert lines[0].startswith("2 rows (") and lines[0].endswith(", 3 steps")
    assert [line.split()[0] for line in lines[1:5]] == ["preallocated", "DynamicCache"] * 2
    assert lines[-1] == "same tokens: True"
