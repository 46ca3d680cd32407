"""Write what replay runs print and write, with times, versions and paths masked, into one directory.

Run it before and after a change that must not alter behaviour, then compare the two directories:

python scripts/replay_outputs.py /tmp/before  # before the change
python scripts/replay_outputs.py /tmp/after  # after it
diff -r /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference-runs"

# Each run: a name and its pytest arguments; {work} is the run's scratch directory.
RUNS: dict[str, list[str]] = {
    "replay": ["--judge=replay", "-v"],
    "paper": [
        "--judge=replay",
        "--instrumental-subset=paper",
        "--instrumental-max-conv=anti_ic=5",
        "--instrumental-min-gap=60",
    ],
    "offline": ["--judge=offline", "-k", "Base or evading_shutdown"],
    "baseline": [
        "--judge=replay",
        "--instrumental-baseline={baseline}",
        "-k",
        "evading_shutdown or hacking",
        "--instrumental-max-anti-rise=3",
        "--instrumental-max-gap-drop=1",
        "--instrumental-alpha=0.5",
    ],
    "snapshot": ["--judge=replay", "-k", "Thinking and anti_ic", "--instrumental-snapshot", "--snapshot-update"],
}

_MASKS = [
    (re.compile(r"\d+(\.\d+)?s( \(\d+:\d+:\d+\))?"), "<seconds>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"platform linux -- .*"), "<platform>"),
    (re.compile(r"(rootdir|configfile|plugins|cachedir): .*"), r"\1: <masked>"),
]
_JSON_MASKED = {"started_at", "finished_at", "plugin_version", "packages", "python", "platform", "duration_s"}


def _mask(text: str, work: Path) -> str:
    text = text.replace(str(work), "<work>")
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def _mask_json(value: object) -> object:
    if isinstance(value, dict):
        return {k: ("<masked>" if k in _JSON_MASKED else _mask_json(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(v) for v in value]
    return value


def run(name: str, arguments: list[str], work: Path, out: Path, baseline: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "--instrumental",
        f"--instrumental-replay={REFERENCE}",
        f"--instrumental-json={work / 'results.json'}",
        f"--instrumental-report={work / 'report'}",
        f"--instrumental-cache-dir={work / 'cache'}",
        f"--instrumental-snapshot-dir={work / 'snapshots'}",
        *[a.format(baseline=baseline) for a in arguments],
    ]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    target = out / name
    target.mkdir(parents=True)
    (target / "terminal.txt").write_text(f"exit {done.returncode}\n" + _mask(done.stdout + done.stderr, work))
    document = json.loads((work / "results.json").read_text())
    (target / "results.json").write_text(json.dumps(_mask_json(document), indent=1, sort_keys=True) + "\n")
    for report in sorted((work / "report").iterdir()):
        (target / report.name).write_text(_mask(report.read_text(), work))
    for snapshot in sorted((work / "snapshots").rglob("*")) if (work / "snapshots").exists() else []:
        if snapshot.is_file():
            (target / f"snapshot-{snapshot.name}").write_text(snapshot.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="an empty or new directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline.json"
        for name, arguments in RUNS.items():
            work = Path(scratch) / name
            work.mkdir()
            run(name, arguments, work, args.out, baseline)
            if name == "replay":
                baseline.write_text((work / "results.json").read_text())
            print(f"{name}: {args.out / name}")


if __name__ == "__main__":
    main()
