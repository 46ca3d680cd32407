"""What makes verdict snapshots comparable: the setup each model's snapshots were recorded with.

The verdicts themselves are syrupy snapshots (one ``instrumental.ambr`` entry per item, written
by the plugin). A verdict is only comparable with one judged for the same model (source,
revision, generation settings), by the same judge, under the same suffix text, so the setup of
each model is kept beside the snapshots in ``instrumental.setup.json`` and checked before any
verdict is compared; a difference is named, not reported as a flip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_instrumental.errors import InputError

SNAPSHOT_BASENAME = "instrumental"  # the snapshot file is <directory>/instrumental.ambr
SETUP_FILE = "instrumental.setup.json"
DEFAULT_DIR_NAME = "instrumental_snapshots"

Setup = dict[str, Any]  # {"model": {...}, "judge": str, "suffixes": {name: sha256}}


def model_setup(model: Mapping[str, object], judge: str, suffixes: Mapping[str, str]) -> Setup:
    return {"model": dict(model), "judge": judge, "suffixes": dict(suffixes)}


def read_setups(directory: Path) -> dict[str, Setup]:
    """The recorded setup of each model; none when nothing was recorded yet."""
    path = directory / SETUP_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the snapshots' setup: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{path}: not a mapping of model name to setup")
    return data


def write_setups(directory: Path, setups: Mapping[str, Setup]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(sorted(setups.items())), indent=2, sort_keys=True, ensure_ascii=False)
    (directory / SETUP_FILE).write_text(text + "\n", encoding="utf-8")


def setup_changes(recorded: Setup | None, current: Setup) -> list[str]:
    """What differs between the recorded and the current setup, one phrase each. Suffixes are
    compared where both have them: a suffix new to this run only lacks snapshots."""
    if recorded is None:
        return []
    changes = []
    if recorded.get("judge") != current["judge"]:
        changes.append(f"judge {recorded.get('judge')!r} -> {current['judge']!r}")
    old_model, new_model = recorded.get("model", {}), current["model"]
    for key in sorted(old_model.keys() | new_model.keys()):
        if old_model.get(key) != new_model.get(key):
            changes.append(f"{key} {old_model.get(key)!r} -> {new_model.get(key)!r}")
    old_suffixes = recorded.get("suffixes", {})
    for name, sha in sorted(current["suffixes"].items()):
        if name in old_suffixes and old_suffixes[name] != sha:
            changes.append(f"suffix {name} text changed")
    return changes
