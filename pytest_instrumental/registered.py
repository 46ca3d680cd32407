"""What other packages register: backends and judges under entry-point groups (docs/extending.md),
found by the prefix ``--model`` or ``--judge`` names them with, and opened so that a failure of
their code is one InputError naming the entry point."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from pytest_instrumental.errors import InputError

BACKENDS = "pytest_instrumental.backends"
JUDGES = "pytest_instrumental.judges"
# The prefixes this package serves itself: a plugin that registered one would silently take it over.
BUILT_IN = {BACKENDS: ("openai",), JUDGES: ("openai", "hf", "offline", "replay")}
Opened = TypeVar("Opened")


def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group``, by name: the prefix they serve. One that registered a
    built-in prefix is refused, naming it."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    taken = sorted(set(found) & set(BUILT_IN[group]))
    if taken:
        entry_point = found[taken[0]]
        raise InputError(
            f"the {_what(group)} entry point {entry_point.name} = {entry_point.value} registers the built-in "
            f"prefix {entry_point.name!r} (group {group}); a plugin registers a prefix of its own"
        )
    return found


def _what(group: str) -> str:
    return "backend" if group == BACKENDS else "judge"


def prefix_of(name: str, group: str) -> str | None:
    """The registered prefix of ``<prefix>:<name>``; None when ``name`` has none of ``group``'s."""
    prefix, colon, rest = name.partition(":")
    return prefix if colon and rest and prefix in registered(group) else None


def open_registered(
    group: str, name: str, option: str, call: Callable[[Any], Opened], required: Sequence[str]
) -> Opened:
    """``call(factory)`` with the factory registered for ``name``'s prefix; ``option`` (e.g.
    ``--model``) names what asked for it in the error. The factory is what the entry point loads:
    its type is the registry's protocol (``BackendFactory``, ``JudgeFactory``); what it opens must
    have a string ``name`` and the ``required`` methods of its protocol."""
    prefix = name.partition(":")[0]
    entry_point = registered(group)[prefix]
    what = _what(group)
    where = f"{option} {name}: the {what} registered as {prefix!r} ({entry_point.value})"
    try:
        opened = call(entry_point.load())
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # another package's code: its failure is one line naming it
        raise InputError(f"{where} failed to open: {type(exc).__name__}: {exc}") from exc
    lacking = [m for m in required if not callable(getattr(opened, m, None))]
    if not isinstance(getattr(opened, "name", None), str):
        lacking.insert(0, "name")
    if lacking:
        raise InputError(
            f"{where} opened {type(opened).__name__}, not a {what}: it lacks {', '.join(lacking)} (docs/extending.md)"
        )
    return opened
