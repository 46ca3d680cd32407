"""Steering texts loaded from the bundled and user directories: suffixes (appended to the user
turn, or as a defence to the system prompt) and prefills, the attacker's start of an answer
(``prefills/``). What a text is and does (``Suffix``, ``steer``) is in conditions.py."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pytest_instrumental.bundled import bundled_dir
from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import TEXT_LIMIT, read_text
from pytest_instrumental.vocabulary.conditions import Suffix

# No "-": item ids join model, suffix and scenario with "-".
_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


class Texts(Mapping[str, Suffix]):
    """Named texts found in directories (``NAME.txt``), each read when first looked up: a text the
    run does not use is never opened, so a FIFO or a huge file beside it stops nothing."""

    def __init__(self, paths: dict[str, Path], what: str) -> None:
        self._paths, self._what, self._read = paths, what, dict[str, Suffix]()

    def __getitem__(self, name: str) -> Suffix:
        if name not in self._read:
            path = self._paths[name]
            self._read[name] = Suffix(name, read_text(path, TEXT_LIMIT, f"{self._what} file"), path)
        return self._read[name]

    def __contains__(self, name: object) -> bool:  # without reading the file
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def load_suffixes(extra_dirs: Iterable[Path] = ()) -> Texts:
    """Every ``*.txt`` suffix of the bundled directory and of ``extra_dirs``, by name."""
    return _load_texts("suffixes", "suffix", extra_dirs)


def load_prefills(extra_dirs: Iterable[Path] = ()) -> Texts:
    """Every ``*.txt`` of the bundled ``prefills/`` and of ``extra_dirs``, by name: a named text,
    as a suffix is."""
    return _load_texts("prefills", "prefill", extra_dirs)


def _load_texts(kind: str, what: str, extra_dirs: Iterable[Path]) -> Texts:
    found: dict[str, Path] = {}
    for directory in (bundled_dir(kind), *extra_dirs):
        if not directory.is_dir():
            why = "is not a directory" if directory.exists() else "does not exist"
            raise InputError(f"{what} directory {directory} {why}")
        for path in sorted(directory.glob("*.txt")):
            if not _NAME.match(path.stem):
                raise InputError(f"{path}: a {what} name may hold only letters, digits and underscores")
            if path.stem in found:
                raise InputError(f"{path}: {what} {path.stem!r} is already defined by {found[path.stem]}")
            found[path.stem] = path
    return Texts(found, what)


def select_suffixes(available: Mapping[str, Suffix], names: Sequence[str], asked_by: str = "") -> list[Suffix]:
    """The suffixes named, in the order given; an unknown or repeated name is an error, after
    ``asked_by`` (the option) where given."""
    where = f"{asked_by}: " if asked_by else ""
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"{where}unknown suffix {unknown[0]!r}; known suffixes: {', '.join(sorted(available))}")
    if len(set(names)) != len(names):
        raise InputError(f"{where}suffix named more than once: {', '.join(names)}")
    return [available[n] for n in names]
