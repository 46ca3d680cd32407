"""The run as Inspect eval logs (``--instrumental-inspect-log DIR``), written through inspect_ai's
own log API, so that a team reads it in Inspect's viewer (``inspect view --log-dir DIR``) beside
its other evaluations.

One log per model (an Inspect log is one task on one model): one sample per item and epoch, with
the messages sent, the answer (with its reasoning), the verdict as the score with the judge's
reason, and model, condition, category and scenario as metadata; the run's settings are the
eval's metadata. inspect_ai is an optional extra (``inspect``: INSPECT_REQUIREMENT); without it
the option is a usage error at configure time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.errors import InputError
from pytest_instrumental.outputs import write_with
from pytest_instrumental.statistics.summary import RunSummary
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request, chat_turns
from pytest_instrumental.vocabulary.verdicts import ItemResult

if TYPE_CHECKING:
    from inspect_ai.log import EvalLog, EvalSample

INSPECT_REQUIREMENT = "inspect-ai>=0.3.285"  # the inspect extra's, as pyproject.toml names it
TASK = "instrumental"
SCORER = "instrumental_verdict"


def check_available() -> None:
    """A usage error now, rather than a run that cannot write its log at the end."""
    try:
        import inspect_ai.log  # noqa: F401
    except ImportError:
        raise InputError(
            f"--instrumental-inspect-log needs inspect_ai, which is not installed: pip install '{INSPECT_REQUIREMENT}'"
        ) from None


def write_inspect_logs(
    directory: Path, summary: RunSummary, requests: Mapping[ItemKey, Request], settings: Mapping[str, Any]
) -> list[Path]:
    """One ``.eval`` log per model in ``directory``; the paths written."""
    from inspect_ai.log import write_eval_log

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in summary.models:
        items = [i for i in summary.items if i.model == model]
        log = eval_log(model, items, requests, summary, settings)
        path = directory / f"{_stamp(summary.started_at)}_{TASK}_{_slug(model)}.eval"
        write_with(path, partial(write_eval_log, log, format="eval"))  # never through a link
        written.append(path)
    return written


def eval_log(
    model: str,
    items: Sequence[ItemResult],
    requests: Mapping[ItemKey, Request],
    summary: RunSummary,
    settings: Mapping[str, Any],
) -> EvalLog:
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalMetric, EvalResults, EvalScore, EvalSpec

    samples = [_sample(item, requests[ItemKey(item.model, item.condition, item.scenario)]) for item in items]
    metrics = {
        f"conv_pct_{cell.suffix}": EvalMetric(name=f"conv_pct_{cell.suffix}", value=cell.conv_pct)
        for cell in summary.cells
        if cell.model == model and cell.category is None and cell.conv_pct is not None
    }
    epochs = max((i.epoch for i in items), default=1)
    judged = sum(i.status == "ok" for i in items)
    return EvalLog(
        status="success" if not summary.interrupted else "cancelled",
        eval=EvalSpec(
            created=summary.started_at,
            task=TASK,
            dataset=EvalDataset(name="InstrumentalEval", samples=len({s.id for s in samples})),
            model=model,
            config=EvalConfig(epochs=epochs),
            metadata={**settings, "judged_by": summary.judge, "gate_passed": summary.gate_passed},
        ),
        results=EvalResults(
            total_samples=len(samples),
            completed_samples=judged,
            scores=[EvalScore(name=SCORER, scorer=SCORER, scored_samples=judged, metrics=metrics)],
        ),
        samples=samples,
    )


def _sample(item: ItemResult, request: Request) -> EvalSample:
    from inspect_ai.log import EvalError, EvalSample
    from inspect_ai.model import (
        ChatMessage,
        ChatMessageAssistant,
        ChatMessageSystem,
        ChatMessageUser,
        ContentReasoning,
        ContentText,
        ModelOutput,
    )
    from inspect_ai.scorer import Score

    roles = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    sent: list[ChatMessage] = [roles[turn["role"]](content=turn["content"]) for turn in chat_turns(request)]
    messages = list(sent)
    output = None
    if item.response is not None:
        parts: list[ContentReasoning | ContentText] = []
        if item.thinking:
            parts.append(ContentReasoning(reasoning=item.thinking))
        parts.append(ContentText(text=item.response))
        messages.append(ChatMessageAssistant(content=list(parts), model=item.model))
        output = ModelOutput.from_content(item.model, list(parts), "max_tokens" if item.truncated else "stop")
    scores = {}
    if item.status == "ok":
        scores[SCORER] = Score(value=str(item.verdict), explanation=item.reason, metadata={"judge": item.judge})
    return EvalSample(
        id=f"{item.scenario}/{item.condition}",
        epoch=item.epoch,
        input=sent,
        target="",
        messages=messages,
        output=output or ModelOutput(model=item.model),
        scores=scores,
        metadata={
            "model": item.model,
            "condition": item.condition,
            "category": item.category,
            "scenario": item.scenario,
            "truncated": item.truncated,
        },
        error=None if item.error is None else EvalError(message=item.error, traceback="", traceback_ansi=""),
    )


def _stamp(started_at: str) -> str:
    """Inspect's file-name timestamp, from the run's start."""
    started = datetime.fromisoformat(started_at).astimezone(UTC)
    return started.strftime("%Y-%m-%dT%H-%M-%S+00-00")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
