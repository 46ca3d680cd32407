"""Recorded runs: the reference implementation's run logs, or this tool's results JSON, read
into one ``Recording`` per item.

A replay serves them through ``backends.replay.ReplayBackend`` (nothing is generated) and
``judges.replay.ReplayJudge`` (nothing is judged afresh); ``replay.recorded_results`` runs that
replay outside pytest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import DATA_LIMIT, load_json, read_bytes
from pytest_instrumental.records.results_file import read_results
from pytest_instrumental.text import visible
from pytest_instrumental.vocabulary.conditions import Suffix, parse_condition, steer
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.scenarios import Category, ScenarioSet
from pytest_instrumental.vocabulary.suffixes import load_prefills

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
_HEADER = re.compile(r"Processing benchmark: (?P<benchmark>.+?) \| mode=(?P<mode>\S+)")
_START, _END = b"<result>", b"</result>"
# The body of one record: its fields in the reference order. The fields are not escaped in the
# log, so each is matched up to its own closing tag followed by the next; the whole body must match.
_RECORD = re.compile("".join(rf"[ \t]*<{f}>(?P<{f}>.*?)</{f}>\n" for f in _FIELDS), re.S)
_PROMPT = re.compile(r"<task_prompt>(.*?)</task_prompt>", re.S)


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


def load_recordings(
    path: Path,
    scenarios: ScenarioSet,
    suffixes: Mapping[str, Suffix],
    prefills: Mapping[str, Suffix] | None = None,
) -> Recordings:
    """Every recording under ``path``: a results JSON file, a reference run directory (holding
    ``config.json`` and ``stdout.log``), or a directory of those. ``prefills``: the names of the
    prefill attacks there are (None: the bundled ones)."""
    if not path.exists():
        raise InputError(f"--instrumental-replay: {path} does not exist")
    sources = list(_recorded_sources(path))
    if not sources:
        raise InputError(f"--instrumental-replay: {path} holds no recorded runs (run directories or results JSON)")
    recordings = Recordings()
    known = load_prefills() if prefills is None else prefills  # read once, not per item
    for source in sources:
        if source.suffix == ".json":
            found = _read_results_json(source, scenarios, suffixes, known)
        else:
            found = _read_reference_run(source, scenarios, suffixes, recordings.unattributed)
        for recording in found:
            if recording.key in recordings:
                earlier = recordings[recording.key].source
                raise InputError(f"{recording.source}: {recording.key.item_id} is also recorded in {earlier}")
            recordings[recording.key] = recording
    if not recordings:
        problems = "; ".join(recordings.unattributed[:3])
        raise InputError(f"--instrumental-replay: nothing usable in {path}{': ' + problems if problems else ''}")
    return recordings


def _recorded_sources(path: Path) -> Iterator[Path]:
    if path.is_file() or (path / "stdout.log").is_file():
        yield path
    else:
        for child in sorted(path.iterdir()):
            if (child / "stdout.log").is_file() or (child.is_file() and child.suffix == ".json"):
                yield child


def _read_results_json(
    path: Path, scenarios: ScenarioSet, suffixes: Mapping[str, Suffix], prefills: Mapping[str, Suffix]
) -> Iterator[Recording]:
    categories = {s.id: s.category for s in scenarios}
    for number, item in enumerate(read_results(path).items, start=1):
        source = f"{path}: item {number}"
        if parse_condition(item.condition, suffixes, prefills) is None:
            known = ", ".join(sorted(suffixes))
            raise InputError(f"{source}: suffix {visible(repr(item.condition))} is not a known suffix ({known})")
        if item.epoch > 1:
            raise InputError(
                f"{source}: a run with epochs (epoch {item.epoch}) cannot be replayed; it can be a baseline"
            )
        if categories.get(item.scenario) != item.category:
            raise InputError(
                f"{source}: scenario {visible(repr(item.scenario))} ({visible(item.category)}) "
                "matches no known scenario"
            )
        yield Recording(
            item.key, source, item.response, item.thinking, item.verdict, item.reason, item.judge, item.error
        )


def _read_reference_run(
    run_dir: Path, scenarios: ScenarioSet, suffixes: Mapping[str, Suffix], unattributed: list[str]
) -> Iterator[Recording]:
    """The records of one reference run, strictly: a record is the lines from ``<result>`` to
    ``</result>``, and one that is cut off, not UTF-8, or not the reference fields in order is a
    damaged record, never merged with the next and never dropped. A damaged record that still
    names its scenario becomes an error item; one that does not is added to ``unattributed``."""
    config_path = run_dir / "config.json"
    config = load_json(config_path, DATA_LIMIT, "reference run config")
    try:
        model = str(config["HF_MODEL_NAME"]).rsplit("/", 1)[-1]
        mode = str(config["STEERING_MODE"])
        judge = str(config["JUDGE_MODEL"])
    except (TypeError, KeyError) as exc:
        raise InputError(f"{config_path}: not a reference run config ({exc!r})") from exc
    by_stem = {c.source_stem: c for c in scenarios.categories}
    log_path = run_dir / "stdout.log"
    category: Category | None = None
    number = 0
    for lines, problem in _records(log_path, by_stem):
        if isinstance(lines, Category):  # a benchmark header
            category = lines
            continue
        number += 1
        where = f"{log_path}: record {number}"
        if category is None:
            raise InputError(f"{where}: record before any 'Processing benchmark' line")
        body = _decode(lines)
        entry = _RECORD.fullmatch(body) if body is not None else None
        if problem is None and body is None:
            problem = "not UTF-8"
        elif problem is None and entry is None:
            problem = "its fields are not the reference run's, in order"
        if problem is not None:
            try:
                yield _damaged(where, problem, _decode(lines, lenient=True) or "", category, model, mode)
            except UnattributedRecord as exc:
                unattributed.append(str(exc))
            continue
        assert entry is not None
        source = f"{where} ({category.slug} task {entry['task_number']})"
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


class UnattributedRecord(InputError):
    """A damaged record that names no scenario: it cannot become an item."""


class Recordings(dict[ItemKey, Recording]):
    """The recordings found, by item; ``unattributed`` says which damaged records named no
    scenario (reported, and failing the gate: recorded data was lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.unattributed: list[str] = []


def _records(log_path: Path, by_stem: Mapping[str, Category]) -> Iterator[tuple[Category | list[bytes], str | None]]:
    """The log's benchmark headers (as their category) and records (their body lines, and what
    is wrong with the record's framing, if anything), in order. Lines outside records are noise."""
    raw = read_bytes(log_path, DATA_LIMIT, "reference run log")
    record: list[bytes] | None = None
    for line in raw.split(b"\n"):
        header = _HEADER.fullmatch(line.decode("utf-8", "replace")) if record is None else None
        if header is not None:
            category = by_stem.get(header["benchmark"])
            if category is None:
                raise InputError(f"{log_path}: benchmark {header['benchmark']!r} matches no scenario category")
            yield category, None
        elif line == _START:
            if record is not None:
                yield record, "it has no </result> before the next <result>"
            record = []
        elif line == _END and record is not None:
            yield record, None
            record = None
        elif record is not None:
            record.append(line)
    if record is not None:
        yield record, "the log ends inside it (cut off)"


def _decode(lines: list[bytes], lenient: bool = False) -> str | None:
    try:
        return "".join(line.decode("utf-8", "replace" if lenient else "strict") + "\n" for line in lines)
    except UnicodeDecodeError:
        return None


def _damaged(where: str, problem: str, text: str, category: Category, model: str, mode: str) -> Recording:
    """A damaged record as an error item of the scenario whose prompt it still holds."""
    prompt = _PROMPT.search(text)
    scenario = next((s for s in category.scenarios if prompt and s.prompt == prompt.group(1)), None)
    if scenario is None:
        raise UnattributedRecord(f"{where}: damaged record ({problem}) that names no {category.slug} scenario")
    error = f"{where}: damaged record: {problem}"
    return Recording(ItemKey(model, mode, scenario.id), where, None, None, None, None, None, error)


def recorded_models(recordings: Mapping[ItemKey, Recording]) -> list[str]:
    return sorted({key.model for key in recordings})
