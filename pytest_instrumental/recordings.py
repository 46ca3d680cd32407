"""Recorded runs: the reference implementation's run logs, or this tool's results JSON, read
into one ``Recording`` per item.

A replay serves them through ``backends.replay.ReplayBackend`` (nothing is generated) and
``judges.replay.ReplayJudge`` (nothing is judged afresh); ``replay.recorded_results`` runs that
replay outside pytest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_instrumental.errors import InputError
from pytest_instrumental.results_json import read_results
from pytest_instrumental.scenarios import ScenarioSet
from pytest_instrumental.suffixes import Suffix, steer
from pytest_instrumental.verdicts import ItemKey

REPLAY = "replay"

_FIELDS = (
    "task_number",
    "steering_mode",
    "task_prompt",
    "steered_prompt",
    "test_llm_thinking",
    "test_llm_response",
    "judge_decision",
    "judge_reason",
)
# A benchmark header, or one <result> record with its fields in the reference order. The fields
# are not escaped in the log, so each is matched up to its own closing tag followed by the next.
_LOG_ENTRY = re.compile(
    r"^Processing benchmark: (?P<benchmark>.+?) \| mode=(?P<mode>\S+)$"
    r"|^<result>\n" + "".join(rf"[ \t]*<{f}>(?P<{f}>.*?)</{f}>\n" for f in _FIELDS) + r"</result>$",
    re.S | re.M,
)


@dataclass(frozen=True)
class Recording:
    """One recorded item, as found; ``source`` says where (file and record) for messages."""

    key: ItemKey
    source: str
    response: str | None
    thinking: str | None
    verdict: str | None
    reason: str | None
    judge: str | None
    error: str | None


def load_recordings(path: Path, scenarios: ScenarioSet, suffixes: Mapping[str, Suffix]) -> dict[ItemKey, Recording]:
    """Every recording under ``path``: a results JSON file, a reference run directory (holding
    ``config.json`` and ``stdout.log``), or a directory of those."""
    if not path.exists():
        raise InputError(f"--instrumental-replay: {path} does not exist")
    sources = list(_recorded_sources(path))
    if not sources:
        raise InputError(f"--instrumental-replay: {path} holds no recorded runs (run directories or results JSON)")
    recordings: dict[ItemKey, Recording] = {}
    for source in sources:
        if source.suffix == ".json":
            found = _read_results_json(source, scenarios)
        else:
            found = _read_reference_run(source, scenarios, suffixes)
        for recording in found:
            if recording.key in recordings:
                earlier = recordings[recording.key].source
                raise InputError(f"{recording.source}: {recording.key.item_id} is also recorded in {earlier}")
            recordings[recording.key] = recording
    return recordings


def _recorded_sources(path: Path) -> Iterator[Path]:
    if path.is_file() or (path / "stdout.log").is_file():
        yield path
    else:
        for child in sorted(path.iterdir()):
            if (child / "stdout.log").is_file() or (child.is_file() and child.suffix == ".json"):
                yield child


def _read_results_json(path: Path, scenarios: ScenarioSet) -> Iterator[Recording]:
    categories = {s.id: s.category for s in scenarios}
    for number, item in enumerate(read_results(path), start=1):
        source = f"{path}: item {number}"
        if categories.get(item.scenario) != item.category:
            raise InputError(f"{source}: scenario {item.scenario!r} ({item.category}) matches no known scenario")
        yield Recording(
            item.key, source, item.response, item.thinking, item.verdict, item.reason, item.judge, item.error
        )


def _read_reference_run(run_dir: Path, scenarios: ScenarioSet, suffixes: Mapping[str, Suffix]) -> Iterator[Recording]:
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = str(config["HF_MODEL_NAME"]).rsplit("/", 1)[-1]
        mode = str(config["STEERING_MODE"])
        judge = str(config["JUDGE_MODEL"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{config_path}: not a reference run config ({exc!r})") from exc
    by_stem = {c.source_stem: c for c in scenarios.categories}
    log_path = run_dir / "stdout.log"
    text = log_path.read_text(encoding="utf-8")
    category = None
    for entry in _LOG_ENTRY.finditer(text):
        if entry["benchmark"] is not None:
            category = by_stem.get(entry["benchmark"])
            if category is None:
                raise InputError(f"{log_path}: benchmark {entry['benchmark']!r} matches no scenario category")
            continue
        source = f"{log_path}: {category.slug if category else '?'} record {entry['task_number']}"
        if category is None:
            raise InputError(f"{source}: record before any 'Processing benchmark' line")
        if entry["steering_mode"] != mode:
            raise InputError(f"{source}: steering mode {entry['steering_mode']!r} differs from config.json's {mode!r}")
        prompt = entry["task_prompt"]
        scenario = next((s for s in category.scenarios if s.prompt == prompt), None)
        if scenario is None:
            raise InputError(f"{source}: the recorded prompt matches no {category.slug} scenario")
        suffix = suffixes.get(mode)
        if suffix is not None and steer(prompt, suffix) != entry["steered_prompt"]:
            raise InputError(f"{source}: the recorded steered prompt differs from suffix {mode!r} ({suffix.path})")
        yield Recording(
            key=ItemKey(model, mode, scenario.id),
            source=source,
            response=entry["test_llm_response"],
            thinking=entry["test_llm_thinking"] or None,
            verdict=entry["judge_decision"],
            reason=entry["judge_reason"],
            judge=judge,
            error=None,
        )


def recorded_models(recordings: Mapping[ItemKey, Recording]) -> list[str]:
    return sorted({key.model for key in recordings})
