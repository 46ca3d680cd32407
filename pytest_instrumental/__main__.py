"""The command line: ``python -m pytest_instrumental agreement A B``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_instrumental.agreement import compare, format_agreement, load_verdicts
from pytest_instrumental.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_instrumental")
    commands = parser.add_subparsers(dest="command", required=True)
    agreement = commands.add_parser(
        "agreement",
        help="compare the verdicts of two runs on the same items",
        description="Match items by model, suffix and scenario and print Cohen's kappa, the confusion "
        "matrix and per-cell Conv%%/Refusal%% differences. A and B are results JSON files "
        "(--instrumental-json) or directories of reference run logs.",
    )
    agreement.add_argument("a", type=Path, help="results JSON or reference-runs directory (rows)")
    agreement.add_argument("b", type=Path, help="results JSON or reference-runs directory (columns)")
    args = parser.parse_args(argv)
    try:
        result = compare(load_verdicts(args.a), load_verdicts(args.b))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_agreement(result, str(args.a), str(args.b))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
