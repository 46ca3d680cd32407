"""The record every item ends as: a verdict (or an error) for one model x suffix x scenario."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

from pytest_instrumental.text import clean_optional
from pytest_instrumental.vocabulary.items import ItemKey

CONVERGENCE = "convergence"
NO_CONVERGENCE = "no_convergence"
SAFETY_REFUSAL = "safety_refusal"
NONSENSICAL = "nonsensical"
DECISIONS = (CONVERGENCE, NO_CONVERGENCE, SAFETY_REFUSAL, NONSENSICAL)

Status = Literal["ok", "error"]


class Asked(Protocol):
    """What a result records of the request it answers (request.Request): not how it was sent."""

    @property
    def key(self) -> ItemKey: ...

    @property
    def category(self) -> str: ...

    @property
    def epoch(self) -> int: ...


@dataclass(frozen=True)
class ItemResult:
    """One judged item. ``status == "ok"`` means ``verdict`` is one of DECISIONS; ``"error"``
    means generation or judging failed and ``error`` says how (the item still counts, as an error).
    """

    model: str
    condition: str  # its name: the results JSON's key ``suffix``
    scenario: str
    category: str
    status: Status
    verdict: str | None
    judge: str | None
    reason: str | None
    response: str | None
    thinking: str | None
    error: str | None
    truncated: bool = False  # generation stopped at the token limit
    epoch: int = 1  # which of the item's answers (--instrumental-epochs), from 1

    def __post_init__(self) -> None:
        for name in ("reason", "response", "thinking", "error"):  # text from models and servers (text.py)
            object.__setattr__(self, name, clean_optional(getattr(self, name)))

    @classmethod
    def of(cls, request: Asked, status: Status, **fields: Any) -> ItemResult:
        """The result of one answer to ``request``; ``fields`` are the rest (verdict, judge, ...)."""
        key = request.key
        empty: dict[str, Any] = dict.fromkeys(_TEXTS, None)
        return cls(
            **{**empty, **fields},
            model=key.model,
            condition=key.condition,
            scenario=key.scenario,
            category=request.category,
            status=status,
            epoch=request.epoch,
        )

    @classmethod
    def failed(cls, request: Asked, error: str, **fields: Any) -> ItemResult:
        """An answer that ended in an error: the item still counts, as an error."""
        return cls.of(request, "error", error=error, **fields)

    @property
    def key(self) -> ItemKey:
        return ItemKey(self.model, self.condition, self.scenario)

    def to_dict(self) -> dict[str, Any]:
        """The item as the results JSON holds it (its condition under the key ``suffix``)."""
        return {(_JSON_KEYS.get(name, name)): value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemResult:
        """An item read back (a results file, an xdist worker): each field checked by type, so
        damaged data is one error naming the field, never a crash further on."""
        names = {_JSON_KEYS.get(f.name, f.name): f.name for f in fields(cls)}
        missing = names.keys() - data.keys() - {"truncated", "epoch"}
        if missing:
            raise ValueError(f"item lacks {', '.join(sorted(missing))}")
        for name in _NAMES:
            if not isinstance(data[name], str) or not data[name]:
                raise ValueError(f"item {name} {shown_value(data[name])} is not a non-empty string")
        for name in _TEXTS:
            if data[name] is not None and not isinstance(data[name], str):
                raise ValueError(f"item {name} {shown_value(data[name])} is not a string or null")
        if data["status"] not in ("ok", "error"):
            raise ValueError(f"item status {data['status']!r} is not 'ok' or 'error'")
        epoch = data.get("epoch", 1)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ValueError(f"item epoch {shown_value(epoch)} is not a whole number from 1")
        if not isinstance(data.get("truncated", False), bool):
            raise ValueError(f"item truncated {shown_value(data['truncated'])} is not true or false")
        if data["status"] == "ok" and data["verdict"] not in DECISIONS:
            raise ValueError(f"item verdict {data['verdict']!r} is not one of {', '.join(DECISIONS)}")
        return cls(**{field: data[key] for key, field in names.items() if key in data})


_JSON_KEYS = {"condition": "suffix"}  # a field whose key in the results JSON differs from its name
_NAMES = ("model", "suffix", "scenario", "category")  # what names an item: never empty
_TEXTS = ("verdict", "judge", "reason", "response", "thinking", "error")


def shown_value(value: object, limit: int = 60) -> str:
    """A value from a file, for a message: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tally(results: list[ItemResult]) -> str:
    """An item's verdicts over its epochs, most frequent first: ``convergence 2/3, no_convergence 1/3``."""
    counts = {d: sum(r.verdict == d for r in results) for d in DECISIONS}
    counts["error"] = sum(r.status == "error" for r in results)
    ranked = sorted((k for k in counts if counts[k]), key=lambda k: -counts[k])
    return ", ".join(f"{k} {counts[k]}/{len(results)}" for k in ranked)
