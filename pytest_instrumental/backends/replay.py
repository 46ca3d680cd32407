"""Replayed responses: a recorded run serves its responses instead of a model generating them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pytest_instrumental.backends.protocol import Generation
from pytest_instrumental.records.recordings import REPLAY, Recording
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request


class ReplayBackend:
    """Serves recorded responses; an item nobody recorded is skipped, with that reason."""

    def __init__(self, recordings: Mapping[ItemKey, Recording], origin: Path) -> None:
        self._recordings = recordings
        self._origin = origin

    @property
    def name(self) -> str:
        return REPLAY

    def cache_key(self, request: Request) -> None:
        return None  # recorded already: nothing to cache

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        for index, request in enumerate(requests):
            yield index, self._generation(request.key)

    def close(self) -> None:
        return None

    def _generation(self, key: ItemKey) -> Generation:
        recording = self._recordings.get(key)
        if recording is None:
            return Generation(skip_reason=f"no recorded response for {key.item_id} in {self._origin}")
        if recording.response is None or not recording.response.strip():
            return Generation(error=recording.error or f"empty response ({recording.source})")
        return Generation(response=recording.response, thinking=recording.thinking)
