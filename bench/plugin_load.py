"""What having the plugin installed costs a project that does not use it.

    python bench/plugin_load.py [--runs 10]

Creates a small unrelated project (20 test files of 5 tests each) in a temporary directory and
times `pytest --collect-only -q` there with the plugin loaded and with `-p no:instrumental`,
alternating the two so that machine noise hits both alike. Prints the median wall time of each
and their difference, and the plugin module's own import time from `python -X importtime`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def collect_seconds(project: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *extra],
        cwd=project,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def plugin_import_ms() -> float:
    """The cumulative import time of pytest_instrumental.plugin, less pytest's own."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pytest, pytest_instrumental.plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    cumulative = {}
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if match and match.group(2) == " ":  # top-level imports only
            cumulative[match.group(3)] = int(match.group(1))
    return cumulative.get("pytest_instrumental.plugin", 0) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        for number in range(20):
            tests = "\n".join(f"def test_{number}_{i}():\n    assert {i} == {i}\n" for i in range(5))
            (project / f"test_module_{number}.py").write_text(tests, encoding="utf-8")
        collect_seconds(project)  # warm the file system and bytecode caches
        loaded, without = [], []
        for _ in range(args.runs):
            loaded.append(collect_seconds(project))
            without.append(collect_seconds(project, "-p", "no:instrumental"))
    with_median, without_median = statistics.median(loaded), statistics.median(without)
    print(f"pytest --collect-only, 100 tests, median of {args.runs} runs each:")
    print(f"  with the plugin:      {with_median:.3f} s")
    print(f"  -p no:instrumental:   {without_median:.3f} s")
    print(f"  cost of the plugin:   {1000 * (with_median - without_median):+.0f} ms")
    print(f"import of pytest_instrumental.plugin after pytest: {plugin_import_ms():.0f} ms")


if __name__ == "__main__":
    main()
