"""The results JSON file (schema in docs/results-schema.md): build it from a run's summary, write it,
read its items back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.errors import InputError
from pytest_instrumental.metrics import Gap
from pytest_instrumental.outputs import write_text
from pytest_instrumental.summary import Baseline, RunSummary
from pytest_instrumental.text import visible
from pytest_instrumental.verdicts import ItemKey, ItemResult

if TYPE_CHECKING:  # comparison needs numpy, which reading a results file must not load
    from pytest_instrumental.comparison import CellChange

SCHEMA_VERSION = 1
# Version 2: items carry an ``epoch`` and an item has one record per epoch, which a reader of
# version 1 would take for duplicates. Files of runs with one epoch stay version 1.
EPOCHS_SCHEMA_VERSION = 2
READABLE_VERSIONS = (SCHEMA_VERSION, EPOCHS_SCHEMA_VERSION)


def results_document(run: dict[str, Any], summary: RunSummary) -> dict[str, Any]:
    """The document: ``run`` (how the run was made, its manifest) and the summary's items, cells,
    gaps and comparison."""
    epochs = any(item.epoch > 1 for item in summary.items)
    items = [item.to_dict() for item in summary.items]
    document = {
        "schema_version": EPOCHS_SCHEMA_VERSION if epochs else SCHEMA_VERSION,
        "run": run,
        "coverage": {"items": summary.items_run, "suite_items": summary.suite_items, "partial": summary.partial},
        "gate": {
            "passed": summary.gate_passed,
            "rules": summary.rules,
            "notes": summary.notes,
            "violations": [{**asdict(v), "message": v.message()} for v in summary.violations],
        },
        "items": items,
        "cells": [asdict(cell) for cell in summary.cells],
        "gaps": [{**asdict(gap), **_paired(gap)} for gap in summary.gaps],
    }
    if summary.activation is not None:  # only runs with activation steering have these
        document["activation_gap"] = {
            "conditions": list(summary.activation),
            "gaps": [asdict(gap) for gap in summary.activation_gaps],
        }
    compared = summary.comparison
    if compared is not None:
        document["comparison"] = {
            "shared_items": compared.shared,
            "baseline_items": compared.baseline_items,
            "partial": compared.partial,
            "cells": [
                {
                    **asdict(c),
                    "conv_change_pp": c.conv_change_pp,
                    "refusal_change_pp": c.refusal_change_pp,
                    **_paired(c),
                    "significance_p": summary.significance_p.get((c.model, c.suffix)),
                }
                for c in compared.cells
            ],
            "gaps": [{**asdict(g), "change_pp": g.change_pp} for g in compared.gaps],
            "flips": [{**asdict(f), "direction": f.direction} for f in compared.flips],
            "missing_models": compared.missing_models,
        }
    return document if epochs else _without_epoch_fields(document)


def _paired(figure: Gap | CellChange) -> dict[str, Any]:
    """The paired test a figure carries, by name, and its p-value (whatever the schema version)."""
    return {"paired_test": figure.paired_test, "paired_p": figure.paired_p}


# Fields that only mean something with epochs: a run with one epoch writes the file it always wrote,
# except where a p-value of the epochs' test was used (a baseline with epochs): that one stays.
EPOCH_FIELDS = ("epoch", "flaky_pct", "wilcoxon_p")


def _without_epoch_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_epoch_fields(v)
            for k, v in value.items()
            if k not in EPOCH_FIELDS or (k == "wilcoxon_p" and v is not None)
        }
    if isinstance(value, list):
        return [_without_epoch_fields(v) for v in value]
    return value


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write by the outputs' rule (outputs.py): whole, renamed into place, with the user's umask."""
    write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def read_results(path: Path) -> list[ItemResult]:
    """The items of a results JSON, validated; anything else in it is for people and tools."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read results JSON: {exc}") from exc
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
        except ValueError as exc:
            raise InputError(f"{path}: item {number}: {visible(str(exc))}") from exc
        answer = (item.key, item.epoch)
        if answer in seen:  # which copy is the item's result is unknown: never pick one
            raise InputError(
                f"{path}: item {number}: {visible(item.key.item_id)} (epoch {item.epoch}) is also item {seen[answer]}"
            )
        seen[answer] = number
        items.append(item)
    return items


def read_baseline(path: Path, label: str) -> Baseline:
    items = read_results(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    manifest = data.get("run", {}).get("manifest", {}) if isinstance(data.get("run"), dict) else {}
    scenarios = manifest.get("scenarios", {}) if isinstance(manifest, dict) else {}
    sha = scenarios.get("sha256") if isinstance(scenarios, dict) else None
    if sha is not None and not isinstance(sha, str):
        raise InputError(f"{path}: run.manifest.scenarios.sha256 {sha!r:.60} is not a string")
    return Baseline(label, items, sha)
