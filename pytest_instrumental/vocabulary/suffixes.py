"""Steering texts loaded from the bundled and user directories: suffixes (appended to the user
turn, or as a defence to the system prompt) and prefills, the attacker's start of an answer
(``prefills/``). What a text is and does (``Suffix``, ``steer``) is in conditions.py."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pytest_instrumental.bundled import bundled_dir
from pytest_instrumental.errors import InputError
from pytest_instrumental.vocabulary.conditions import Suffix

# No "-": item ids join model, suffix and scenario with "-".
_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


def load_suffixes(extra_dirs: Iterable[Path] = ()) -> dict[str, Suffix]:
    """Every ``*.txt`` suffix of the bundled directory and of ``extra_dirs``, by name."""
    return _load_texts("suffixes", "suffix", extra_dirs)


def load_prefills(extra_dirs: Iterable[Path] = ()) -> dict[str, Suffix]:
    """Every ``*.txt`` of the bundled ``prefills/`` and of ``extra_dirs``, by name: a named text,
    as a suffix is."""
    return _load_texts("prefills", "prefill", extra_dirs)


def _load_texts(kind: str, what: str, extra_dirs: Iterable[Path]) -> dict[str, Suffix]:
    found: dict[str, Suffix] = {}
    for directory in (bundled_dir(kind), *extra_dirs):
        if not directory.is_dir():
            why = "is not a directory" if directory.exists() else "does not exist"
            raise InputError(f"{what} directory {directory} {why}")
        for path in sorted(directory.glob("*.txt")):
            suffix = _load_suffix(path, what)
            if suffix.name in found:
                raise InputError(f"{path}: {what} {suffix.name!r} is already defined by {found[suffix.name].path}")
            found[suffix.name] = suffix
    return found


def _load_suffix(path: Path, what: str) -> Suffix:
    if not _NAME.match(path.stem):
        raise InputError(f"{path}: a {what} name may hold only letters, digits and underscores")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read {what} file: {exc}") from exc
    return Suffix(path.stem, text, path)


def select_suffixes(available: dict[str, Suffix], names: Sequence[str], asked_by: str = "") -> list[Suffix]:
    """The suffixes named, in the order given; an unknown or repeated name is an error, after
    ``asked_by`` (the option) where given."""
    where = f"{asked_by}: " if asked_by else ""
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"{where}unknown suffix {unknown[0]!r}; known suffixes: {', '.join(sorted(available))}")
    if len(set(names)) != len(names):
        raise InputError(f"{where}suffix named more than once: {', '.join(names)}")
    return [available[n] for n in names]
