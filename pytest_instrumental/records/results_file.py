"""The results JSON file at its lowest level (schema in docs/results-schema.md): its schema versions,
writing a document, and reading one back, validated. What goes in the document is
results_document.py's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import DATA_LIMIT, load_json
from pytest_instrumental.outputs import write_text
from pytest_instrumental.text import visible
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.verdicts import ItemResult, shown_value

SCHEMA_VERSION = 1
# Version 2: items carry an ``epoch`` and an item has one record per epoch, which a reader of
# version 1 would take for duplicates. Files of runs with one epoch stay version 1.
EPOCHS_SCHEMA_VERSION = 2
READABLE_VERSIONS = (SCHEMA_VERSION, EPOCHS_SCHEMA_VERSION)


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write by the outputs' rule (outputs.py): whole, renamed into place, with the user's umask."""
    write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class ResultsFile:
    """What a reader takes from a results JSON: its items, and the hash of the scenario set the run
    ran (None in a file that does not record one). The rest of the file is for people and tools."""

    items: list[ItemResult]
    scenarios_sha256: str | None


def read_results(path: Path) -> ResultsFile:
    """A results JSON's items, validated, and its scenario set's hash; anything else is an InputError."""
    data = load_json(path, DATA_LIMIT, "results JSON")
    if not isinstance(data, dict) or data.get("schema_version") not in READABLE_VERSIONS:
        found = data.get("schema_version") if isinstance(data, dict) else None
        raise InputError(f"{path}: not a results file of schema_version 1 or 2 (found {found!r})")
    if not isinstance(data.get("items"), list):
        raise InputError(f"{path}: 'items' must be a list")
    items = []
    seen: dict[tuple[ItemKey, int], int] = {}
    for number, raw in enumerate(data["items"], start=1):
        try:
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            item = ItemResult.from_dict(raw)
            _check_condition(raw.get("condition"))
        except ValueError as exc:
            raise InputError(f"{path}: item {number}: {visible(str(exc))}") from exc
        answer = (item.key, item.epoch)
        if answer in seen:  # which copy is the item's result is unknown: never pick one
            raise InputError(
                f"{path}: item {number}: {visible(item.key.item_id)} (epoch {item.epoch}) is also item {seen[answer]}"
            )
        seen[answer] = number
        items.append(item)
    return ResultsFile(items, _scenarios_sha256(path, data))


_CONDITION_TEXTS = ("defense", "suffix", "attack")  # an item's condition's parts (docs/results-schema.md)


def _check_condition(condition: object) -> None:
    """An item's ``condition`` (its parts), checked by type as every other field is."""
    if condition is None:
        return
    if not isinstance(condition, dict):
        raise ValueError(f"item condition {shown_value(condition)} is not an object or null")
    unknown = sorted(set(condition) - {*_CONDITION_TEXTS, "strength"})
    if unknown:
        raise ValueError(f"item condition has unknown part {shown_value(unknown[0])}")
    for part in _CONDITION_TEXTS:
        value = condition.get(part)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"item condition {part} {shown_value(value)} is not a string or null")
    strength = condition.get("strength")
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int | float)):
        raise ValueError(f"item condition strength {shown_value(strength)} is not a number or null")


def _scenarios_sha256(path: Path, data: dict[str, Any]) -> str | None:
    run = data.get("run")
    manifest = run.get("manifest", {}) if isinstance(run, dict) else {}
    scenarios = manifest.get("scenarios", {}) if isinstance(manifest, dict) else {}
    sha = scenarios.get("sha256") if isinstance(scenarios, dict) else None
    if sha is not None and not isinstance(sha, str):
        raise InputError(f"{path}: run.manifest.scenarios.sha256 {sha!r:.60} is not a string")
    return sha
