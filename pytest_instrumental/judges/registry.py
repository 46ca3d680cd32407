"""The judge registry: what ``--judge`` accepts, which judge it is by default, and ``open_judge``,
the judges' counterpart of ``backends.registry.open_backend``. Another package can add a judge,
``--judge <prefix>:<name>``, under the ``pytest_instrumental.judges`` entry-point group
(docs/extending.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pytest_instrumental.backends.registry import OPENAI_PREFIX, check_loadable, parse_model
from pytest_instrumental.config import EngineConfig, GenerationConfig, JudgeConfig, ServerConfig
from pytest_instrumental.errors import InputError
from pytest_instrumental.judges.offline import OFFLINE
from pytest_instrumental.judges.openai import PAPER_JUDGE_MODEL
from pytest_instrumental.judges.protocol import Judge
from pytest_instrumental.judges.transformers import HF_PREFIX
from pytest_instrumental.records.recordings import REPLAY, Recording
from pytest_instrumental.registered import JUDGES, open_registered, prefix_of, registered
from pytest_instrumental.vocabulary.items import ItemKey

KNOWN_JUDGES = (OFFLINE, REPLAY, f"{OPENAI_PREFIX}<model>", f"{HF_PREFIX}<model>")


class JudgeFactory(Protocol):
    """What a ``pytest_instrumental.judges`` entry point loads: a callable that opens the judge of
    ``--judge <prefix>:<name>``, given ``name`` and the judge's config."""

    def __call__(self, name: str, *, judging: JudgeConfig) -> Judge: ...


def judge_name(given: str | None, replaying: bool) -> str:
    """The judge named, checked; by default the recorded verdicts of a replay, else the paper's
    judge when an OpenAI key is set, else the offline judge."""
    if given is None:
        if replaying:
            return REPLAY
        return f"{OPENAI_PREFIX}{PAPER_JUDGE_MODEL}" if os.environ.get("OPENAI_API_KEY") else OFFLINE
    prefixed = any(given.startswith(p) and len(given) > len(p) for p in (OPENAI_PREFIX, HF_PREFIX))
    if given not in (REPLAY, OFFLINE) and not prefixed and prefix_of(given, JUDGES) is None:
        known = [*KNOWN_JUDGES, *(f"{prefix}:<name>" for prefix in sorted(registered(JUDGES)))]
        raise InputError(f"--judge: unknown judge {given!r}; known judges: {', '.join(known)}")
    if given == REPLAY and not replaying:
        raise InputError("--judge replay needs --instrumental-replay: fresh generations have no recorded verdicts")
    return given


@dataclass(frozen=True)
class OpenJudge:
    judge: Judge
    note: str  # said after the judge's name in summaries: what is known of its agreement


def open_judge(
    name: str,
    *,
    generation: GenerationConfig,
    server: ServerConfig,
    serving: EngineConfig | None,
    judging: JudgeConfig,
    recordings: Mapping[ItemKey, Recording] | None,
) -> OpenJudge:
    """The judge ``name`` (already checked by ``judge_name``); nothing is called yet (its
    ``prepare``, where it has one, checks it before any model loads)."""
    if name == REPLAY:
        from pytest_instrumental.judges.replay import ReplayJudge

        assert recordings is not None, "a replay judge needs the recordings"
        return OpenJudge(ReplayJudge(recordings), " (replayed verdicts)")
    if name == OFFLINE:
        from pytest_instrumental.judges.offline import OfflineJudge

        offline = OfflineJudge()
        return OpenJudge(offline, f" ({offline.describe_agreement()})")
    if prefix_of(name, JUDGES) is not None:
        return OpenJudge(_registered_judge(name, judging), "")
    if name.startswith(HF_PREFIX):
        from pytest_instrumental.judges.transformers import TransformersJudge

        spec = parse_model(name.removeprefix(HF_PREFIX))
        if spec.engine == "openai":
            raise InputError(f"--judge {name}: a served model judges as openai:<name>, not hf:")
        check_loadable(spec, generation.trust_remote_code)
        return OpenJudge(TransformersJudge(spec, generation, server, serving), "")
    from pytest_instrumental.judges.openai import OpenAIJudge

    judge = OpenAIJudge(name.removeprefix(OPENAI_PREFIX), judging)
    return OpenJudge(judge, "")


def _registered_judge(name: str, judging: JudgeConfig) -> Judge:
    def opened(factory: JudgeFactory) -> Judge:
        return factory(name.partition(":")[2], judging=judging)

    return open_registered(JUDGES, name, "--judge", opened, ("cache_key", "judge", "close"))
