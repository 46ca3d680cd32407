"""The cold default run of two versions of this plugin, side by side.

    python bench/cold_run.py [--baseline b58d85e] [--candidate HEAD] [--rounds 1] [-k EXPR]

Each version is checked out (``git worktree``) into a temporary directory, and
``pytest --instrumental -p no:cacheprovider -q`` runs in an empty project directory with an empty
user cache (``XDG_CACHE_HOME``), without ``OPENAI_API_KEY``, the version first on
``PYTHONPATH``: the 228 items of the default run, the embedded model converted from its GGUF,
every answer generated and judged by the offline judge. Versions alternate, A B A B. It prints
each run's wall time and exit status, the medians and their ratio. The default baseline is the
code before issue 21's speed work. ``-k`` passes a selection to pytest (a short trial of the
script). It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(revision: str, into: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(into), revision], cwd=ROOT, check=True)
    return into


def cold_run(source: Path, scratch: Path, select: list[str]) -> tuple[float, int]:
    """One default run of the plugin at ``source`` with nothing cached: (wall seconds, exit status)."""
    project = Path(tempfile.mkdtemp(dir=scratch, prefix="project-"))
    environ = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    environ["PYTHONPATH"] = str(source)
    environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(dir=scratch, prefix="cache-")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--instrumental", "-p", "no:cacheprovider", "-q", *select],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    print(f"  last line: {(done.stdout.strip().splitlines() or [''])[-1]}", flush=True)
    return seconds, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="b58d85e", help="git revision of the version to compare against")
    parser.add_argument("--candidate", default="HEAD", help="git revision of the version measured")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("-k", dest="select", help="only the items pytest -k selects")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cold-run-") as scratch:
        versions = {
            name: checkout(revision, Path(scratch) / name)
            for name, revision in (("baseline", args.baseline), ("candidate", args.candidate))
        }
        times: dict[str, list[float]] = {name: [] for name in versions}
        try:
            for round_ in range(1, args.rounds + 1):
                for name, source in versions.items():
                    seconds, status = cold_run(source, Path(scratch), ["-k", args.select] if args.select else [])
                    times[name].append(seconds)
                    print(f"round {round_} {name}: {seconds:.1f} s, exit {status}", flush=True)
        finally:
            for source in versions.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=ROOT, check=False)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"medians: baseline {medians['baseline']:.1f} s, candidate {medians['candidate']:.1f} s")
    print(f"candidate / baseline: {medians['candidate'] / medians['baseline']:.2f}")


if __name__ == "__main__":
    main()
