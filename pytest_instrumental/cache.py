"""A content-addressed on-disk store for generations (and, later, verdicts).

One SQLite file in WAL mode, so several processes (pytest-xdist workers) read and write it at
once. An entry is addressed by the SHA-256 of its key fields (canonical JSON): change any field
(model, revision, settings, the exact rendered prompt) and it is a different entry, so a stale
value is never served. Entries are written as each result arrives, so a run killed halfway
keeps everything it finished. Callers must not put secrets in keys or values: only what
determines a result goes in, never credentials.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

DEFAULT_DIR_NAME = ".instrumental-cache"
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

    def count(self, kind: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()
