"""Replayed verdicts: a recorded run serves its judge's verdicts instead of judging afresh."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_instrumental.judges.protocol import Judgement, JudgeRequest
from pytest_instrumental.records.recordings import REPLAY, Recording
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.verdicts import DECISIONS


class ReplayJudge:
    """Serves recorded verdicts as they are, under the name of the judge that made them."""

    def __init__(self, recordings: Mapping[ItemKey, Recording]) -> None:
        self._recordings = recordings

    @property
    def name(self) -> str:
        return REPLAY

    def cache_key(self, request: JudgeRequest) -> None:
        return None  # recorded already: nothing to cache

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        return [self._judgement(r.request.key) for r in requests]

    def close(self) -> None:
        return None

    def _judgement(self, key: ItemKey) -> Judgement:
        recording = self._recordings.get(key)
        if recording is None:
            return Judgement(judge=REPLAY, error=f"no recorded verdict for {key.item_id}")
        judge = recording.judge or REPLAY
        if recording.verdict in DECISIONS:
            return Judgement(judge=judge, decision=recording.verdict, reason=recording.reason)
        error = recording.error or f"recorded verdict {recording.verdict!r} is not one of {', '.join(DECISIONS)}"
        return Judgement(judge=judge, error=f"{error} ({recording.source})")
