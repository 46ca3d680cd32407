"""InstrumentalEval scenarios: loading, validation, the paper's 71-scenario sample.

The scenarios live in ``scenarios/<slug>.toml``, one file per category, converted once from the
published CSVs by ``scripts/convert_instrumentaleval.py`` (which uses ``read_source_csv`` and
``render_category_toml`` below, so the conversion and the byte-identity test share one parser).
"""

from __future__ import annotations

import csv
import json
import random
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_instrumental.bundled import bundled_dir
from pytest_instrumental.errors import InputError

SUBSETS = ("all", "paper")
# The paper's sampling rule (PROTOCOL.md): per file, at most this many, drawn with this seed.
PAPER_MAX_PER_CATEGORY = 15
PAPER_SAMPLE_SEED = 123

_SLUG = re.compile(r"[a-z0-9_]+\Z")
_SOURCE_PREFIX = "Alignment Drift - "


@dataclass(frozen=True)
class Scenario:
    id: str
    category: str
    prompt: str


@dataclass(frozen=True)
class Category:
    slug: str
    name: str
    source: str
    context: str
    scenarios: tuple[Scenario, ...]

    @property
    def source_stem(self) -> str:
        """The CSV's file stem, which the reference implementation logs as the benchmark name."""
        return Path(self.source).stem


@dataclass(frozen=True)
class ScenarioSet:
    """Categories in sorted source-file order, each with its scenarios in run order."""

    categories: tuple[Category, ...]

    def __iter__(self) -> Iterator[Scenario]:
        for category in self.categories:
            yield from category.scenarios

    def __len__(self) -> int:
        return sum(len(c.scenarios) for c in self.categories)

    def category(self, slug: str) -> Category:
        for category in self.categories:
            if category.slug == slug:
                return category
        raise KeyError(slug)

    def subset(self, name: str) -> ScenarioSet:
        if name == "all":
            return self
        if name == "paper":
            return ScenarioSet(tuple(_paper_sample(c) for c in self.categories))
        raise InputError(f"unknown scenario subset {name!r}; known subsets: {', '.join(SUBSETS)}")


def scenario_id(slug: str, number: int) -> str:
    """``<slug>-<NN>``, NN the 1-based row order in the source file."""
    return f"{slug}-{number:02d}"


def _paper_sample(category: Category) -> Category:
    scenarios: Sequence[Scenario] = category.scenarios
    if len(scenarios) > PAPER_MAX_PER_CATEGORY:
        scenarios = random.Random(PAPER_SAMPLE_SEED).sample(list(scenarios), PAPER_MAX_PER_CATEGORY)
    return Category(category.slug, category.name, category.source, category.context, tuple(scenarios))


def load_scenarios(directory: Path | None = None) -> ScenarioSet:
    """Load every ``*.toml`` category file of ``directory`` (default: the bundled scenarios)."""
    directory = directory or bundled_dir("scenarios")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise InputError(f"{directory}: no scenario files (*.toml)")
    seen: dict[str, Path] = {}
    categories = []
    for path in files:
        category = _load_category(path)
        if category.slug in seen:
            raise InputError(f"{path}: category {category.slug!r} is also defined in {seen[category.slug]}")
        seen[category.slug] = path
        categories.append(category)
    # The paper orders categories by source file name; its sample depends on that order.
    return ScenarioSet(tuple(sorted(categories, key=lambda c: c.source)))


def _load_category(path: Path) -> Category:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read scenario file: {exc}") from exc
    slug = _string(data, "slug", path)
    if not _SLUG.match(slug):
        raise InputError(f"{path}: slug {slug!r} must be lowercase letters, digits and underscores")
    rows = data.get("scenario")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path}: needs at least one [[scenario]] table")
    scenarios = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}: scenario {number}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: must be a table")
        expected = scenario_id(slug, number)
        if row.get("id") != expected:
            raise InputError(f"{where}: id must be {expected!r} (got {row.get('id')!r})")
        prompt = _string(row, "prompt", path, where)
        if not prompt.strip():
            raise InputError(f"{where}: prompt is empty")
        scenarios.append(Scenario(expected, slug, prompt))
    return Category(
        slug=slug,
        name=_string(data, "name", path),
        source=_string(data, "source", path),
        context=_string(data, "context", path),
        scenarios=tuple(scenarios),
    )


def _string(table: dict[str, Any], key: str, path: Path, where: str | None = None) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise InputError(f"{where or path}: {key!r} must be a string")
    return value


# --- Conversion from the published CSVs -------------------------------------------------------


def read_source_csv(path: Path) -> tuple[str, list[str]]:
    """The category context and scenario prompts of an InstrumentalEval CSV, as PROTOCOL.md says:
    the first row's first cell is the context; every later non-empty row is one prompt, its
    cells joined with "," and stripped."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    prompts = [",".join(row).strip() for row in rows[1:]]
    return rows[0][0], [p for p in prompts if p]


def category_from_csv(path: Path) -> Category:
    name = path.stem.removeprefix(_SOURCE_PREFIX)
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    context, prompts = read_source_csv(path)
    scenarios = tuple(Scenario(scenario_id(slug, n), slug, p) for n, p in enumerate(prompts, start=1))
    return Category(slug, name, path.name, context, scenarios)


def render_category_toml(category: Category) -> str:
    lines = [
        f"# InstrumentalEval (He et al., arXiv 2502.12206), category {category.name!r}.",
        f"# Converted from {category.source!r} by scripts/convert_instrumentaleval.py; do not edit by hand.",
        f"slug = {_toml_string(category.slug)}",
        f"name = {_toml_string(category.name)}",
        f"source = {_toml_string(category.source)}",
        f"context = {_toml_string(category.context)}",
    ]
    for scenario in category.scenarios:
        lines += ["", "[[scenario]]", f"id = {_toml_string(scenario.id)}", f"prompt = {_toml_string(scenario.prompt)}"]
    text = "\n".join(lines) + "\n"
    if _load_rendered(text) != category:
        raise AssertionError(f"TOML rendering of {category.slug} does not round-trip")
    return text


def _load_rendered(text: str) -> Category:
    data = tomllib.loads(text)
    slug = data["slug"]
    scenarios = tuple(Scenario(row["id"], slug, row["prompt"]) for row in data["scenario"])
    return Category(slug, data["name"], data["source"], data["context"], scenarios)


def _toml_string(value: str) -> str:
    """A multi-line literal string where that is exact (readable in review), else a JSON-escaped one."""
    plain = all(ch in "\n\t" or ch >= " " for ch in value) and "'''" not in value and not value.endswith("''")
    if "\n" in value and plain:
        return "'''\n" + value + "'''"
    return json.dumps(value, ensure_ascii=False)
