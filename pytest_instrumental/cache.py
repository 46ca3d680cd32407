"""The caches: a project's content-addressed store of generations and verdicts, and what is
built once into a cache directory shared by processes (converted models).

One SQLite file in WAL mode, so several processes (pytest-xdist workers) read and write it at
once. An entry is addressed by the SHA-256 of its key fields (canonical JSON): change any field
(model, revision, settings, the exact rendered prompt) and it is a different entry, so a stale
value is never served. Entries are written as each result arrives, so a run killed halfway
keeps everything it finished. Callers must not put secrets in keys or values: only what
determines a result goes in, never credentials. The project's cache directory carries its own
``.gitignore``, as ``.pytest_cache`` does, so git never picks up what it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATABASE = "cache.sqlite"
_GITIGNORE = "# Created by pytest-instrumental automatically.\n*\n"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, digest)
)
"""


def digest(key: dict[str, Any]) -> str:
    canonical = json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def open_project_cache(directory: Path) -> Cache:
    """The project's cache in ``directory``, created with its ``.gitignore`` if need be."""
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text(_GITIGNORE, encoding="utf-8")
    return Cache(directory / DATABASE)


class Cache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # autocommit; a generous busy timeout lets concurrent workers wait for each other's writes
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def get(self, kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT value FROM entries WHERE kind = ? AND digest = ?", (kind, digest(key))
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, kind: str, key: dict[str, Any], value: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO entries (kind, digest, value, created) VALUES (?, ?, ?, ?)",
            (kind, digest(key), json.dumps(value, ensure_ascii=False), time.time()),
        )

    def close(self) -> None:
        self._db.close()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, made by ``build(staging directory)`` unless it exists. Processes that need it at
    once (xdist workers, two sessions) take turns on a lock file, so it is built once; it is built
    beside the target and renamed into place, so nobody sees half of it, and what a killed build
    left behind is removed before the next build starts."""
    from filelock import FileLock

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock")):
        if target.is_dir():  # built by another process while this one waited
            return target
        staging = target.with_name(f"{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            build(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
