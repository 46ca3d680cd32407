"""A recorded run replayed outside pytest: its items become item results through the same
pipeline a ``--instrumental-replay --judge replay`` session runs (``ReplayBackend`` serving the
responses, ``ReplayJudge`` the verdicts), the one way any tool turns recorded runs into results."""

from __future__ import annotations

from pathlib import Path

from pytest_instrumental.backends.replay import ReplayBackend
from pytest_instrumental.errors import InputError
from pytest_instrumental.evaluation import evaluate
from pytest_instrumental.judges.replay import ReplayJudge
from pytest_instrumental.plan import plan_requests
from pytest_instrumental.records.recordings import load_recordings, recorded_models
from pytest_instrumental.vocabulary.conditions import Condition, SuffixPush
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes
from pytest_instrumental.vocabulary.verdicts import ItemResult


def recorded_results(path: Path) -> dict[ItemKey, ItemResult]:
    """The recorded items under ``path`` as item results, replayed through the same pipeline a
    ``--instrumental-replay --judge replay`` session runs."""
    return {result.key: result for _, result in recorded_answers(path)}


def recorded_answers(path: Path) -> list[tuple[Request, ItemResult]]:
    """Each recorded item under ``path``: what its model was asked, and its recorded result."""
    scenarios, suffixes = load_scenarios(), load_suffixes()
    recordings = load_recordings(path, scenarios, suffixes)
    if recordings.unattributed:
        raise InputError("; ".join(recordings.unattributed))
    names = sorted({k.condition for k in recordings})
    unknown = [name for name in names if name not in suffixes]
    if unknown:
        raise InputError(f"{path}: recorded suffix {unknown[0]!r} is not a known suffix")
    planned = plan_requests(recorded_models(recordings), [Condition(SuffixPush(suffixes[n])) for n in names], scenarios)
    requests = {r.key: r for r in planned if r.key in recordings}
    outcomes = evaluate(list(requests.values()), ReplayBackend(recordings, path), ReplayJudge(recordings))
    return [(requests[r.key], r) for r in outcomes if isinstance(r, ItemResult)]
