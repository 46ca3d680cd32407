"""The paper's rubric (the judge's system and user messages) and the strict parsing of a judge's
answer: an answer that is not the rubric's JSON is an error, never a default verdict."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from pytest_instrumental.judges.protocol import Judgement
from pytest_instrumental.vocabulary.verdicts import DECISIONS

_RUBRIC_DIR = Path(__file__).resolve().parent.parent / "rubric"
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S)
_USER_SLOTS = re.compile(r"\{(prompt|response)\}")


class Rubric:
    """The paper's judge prompt (``rubric/judge_system.txt`` and ``judge_user.txt``, byte for
    byte the reference implementation's)."""

    def __init__(self, directory: Path = _RUBRIC_DIR) -> None:
        self.system_template = (directory / "judge_system.txt").read_text(encoding="utf-8")
        self.user_template = (directory / "judge_user.txt").read_text(encoding="utf-8")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256((self.system_template + "\0" + self.user_template).encode("utf-8")).hexdigest()

    def system(self, context: str) -> str:
        # A plain replace: the template also holds literal JSON braces (PROTOCOL.md).
        return self.system_template.replace("{benchmark_context}", context.strip())

    def user(self, steered_prompt: str, response: str) -> str:
        # One pass, so a response that contains "{prompt}" is not substituted again.
        values = {"prompt": steered_prompt, "response": response}
        return _USER_SLOTS.sub(lambda m: values[m.group(1)], self.user_template)


class JudgeAnswerError(ValueError):
    """The judge's answer is not the strict JSON the rubric asks for."""


def parse_judgement(text: str) -> tuple[str, str]:
    """``(decision, reason)`` from the judge's answer: strict JSON, also inside a code fence.
    Anything else, a decision outside the four classes, or fenced blocks that name different
    decisions (which one the judge meant is unknown), raises JudgeAnswerError."""
    stripped = text.strip()
    fenced = _FENCED.findall(stripped)
    decisions = [_decision(block, stripped) for block in fenced] or [_decision(stripped, stripped)]
    named = sorted({decision for decision, _ in decisions})
    if len(named) > 1:
        raise JudgeAnswerError(f"the answer names {len(named)} different decisions ({', '.join(named)})")
    return decisions[0]


def _decision(candidate: str, answer: str) -> tuple[str, str]:
    try:
        data = json.loads(candidate, object_pairs_hook=_once_each)
    except json.JSONDecodeError as exc:
        raise JudgeAnswerError(f"not JSON: {_excerpt(answer)}") from exc
    except RecursionError:
        raise JudgeAnswerError(f"JSON nested too deeply: {_excerpt(answer)}") from None
    if not isinstance(data, dict):
        raise JudgeAnswerError(f"not a JSON object: {_excerpt(answer)}")
    decision = data.get("decision")
    if decision not in DECISIONS:
        raise JudgeAnswerError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    reason = data.get("reason")
    return str(decision), "" if reason is None else str(reason)


def _once_each(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose keys are all different: which of two ``decision``s the judge meant is
    unknown, as with two fenced blocks that disagree."""
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise JudgeAnswerError(f"the answer names {', '.join(repr(k) for k in twice)} more than once")
    return dict(pairs)


def judged_with_one_retry(name: str, ask: Callable[[], str]) -> Judgement:
    """Ask; an answer that does not parse is asked once more, then it is a judge error (never a
    default verdict). ``ask`` raises for transport failures, which are errors at once."""
    problem = ""
    for _ in range(2):
        try:
            decision, reason = parse_judgement(ask())
        except JudgeAnswerError as exc:
            problem = str(exc)
            continue
        return Judgement(judge=name, decision=decision, reason=reason)
    return Judgement(judge=name, error=f"unparseable answer twice: {problem}")


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
