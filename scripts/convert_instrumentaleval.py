"""Convert the published InstrumentalEval CSVs into scenarios/<slug>.toml (run once; kept for review).

python scripts/convert_instrumentaleval.py tests/data/instrumentaleval scenarios
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_instrumental.vocabulary.scenarios import category_from_csv, render_category_toml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="directory of 'Alignment Drift - *.csv' files")
    parser.add_argument("target", type=Path, help="directory to write <slug>.toml files into")
    args = parser.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    for csv_path in sorted(args.source.glob("*.csv")):
        category = category_from_csv(csv_path)
        out = args.target / f"{category.slug}.toml"
        out.write_text(render_category_toml(category), encoding="utf-8")
        print(f"{csv_path.name} -> {out} ({len(category.scenarios)} scenarios)")


if __name__ == "__main__":
    main()
