"""What other packages register: backends and judges under entry-point groups (docs/extending.md),
found by the prefix ``--model`` or ``--judge`` names them with, and opened so that a failure of
their code is one InputError naming the entry point."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from pytest_instrumental.errors import InputError

BACKENDS = "pytest_instrumental.backends"
JUDGES = "pytest_instrumental.judges"
Opened = TypeVar("Opened")


def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group``, by name: the prefix they serve."""
    return {ep.name: ep for ep in entry_points(group=group)}


def prefix_of(name: str, group: str) -> str | None:
    """The registered prefix of ``<prefix>:<name>``; None when ``name`` has none of ``group``'s."""
    prefix, colon, rest = name.partition(":")
    return prefix if colon and rest and prefix in registered(group) else None


def open_registered(group: str, name: str, option: str, call: Callable[[Any], Opened]) -> Opened:
    """``call(factory)`` with the factory registered for ``name``'s prefix; ``option`` (e.g.
    ``--model``) names what asked for it in the error. The factory is what the entry point loads:
    its type is the registry's protocol (``BackendFactory``, ``JudgeFactory``)."""
    prefix = name.partition(":")[0]
    entry_point = registered(group)[prefix]
    what = "backend" if group == BACKENDS else "judge"
    try:
        return call(entry_point.load())
    except InputError:
        raise
    except Exception as exc:  # another package's code: its failure is one line naming it
        raise InputError(
            f"{option} {name}: the {what} registered as {prefix!r} ({entry_point.value}) failed to open: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
