"""Where the data that ships with the package (scenarios, suffixes, prefills) lives."""

from __future__ import annotations

from pathlib import Path

from pytest_instrumental.errors import InputError

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The bundled data directory ``name``.

    A wheel carries it as ``pytest_instrumental/data/<name>`` (see pyproject.toml); a source
    checkout or an editable install has it at the repository's top level.
    """
    candidates = (_PACKAGE_DIR / "data" / name, _PACKAGE_DIR.parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise InputError(f"bundled {name}/ directory not found (looked in {looked}); reinstall pytest-instrumental")
