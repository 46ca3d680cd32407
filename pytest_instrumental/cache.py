"""The caches: a project's content-addressed store of generations and verdicts, and what is
built once into a cache directory shared by processes (converted models).

One SQLite file in WAL mode, so several processes (pytest-xdist workers) read and write it at
once. An entry is addressed by the SHA-256 of its key fields (canonical JSON): change any field
(model, revision, settings, the exact rendered prompt) and it is a different entry, so a stale
value is never served. Entries are written as each result arrives, so a run killed halfway
keeps everything it finished. Callers must not put secrets in keys or values: only what
determines a result goes in, never credentials. The project's cache directory carries its own
``.gitignore`` and a ``CACHEDIR.TAG``, as ``.pytest_cache`` does, so git never picks up what it
holds and backup tools (which honour the Cache Directory Tagging spec) skip it.
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
from typing import Any, TypeVar

from pytest_instrumental.errors import InputError

T = TypeVar("T")

DATABASE = "cache.sqlite"
_GITIGNORE = "# Created by pytest-instrumental automatically.\n*\n"
# https://bford.info/cachedir/: the signature line must be exactly this
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by pytest-instrumental.\n"
    "# For information about cache directory tags, see: https://bford.info/cachedir/\n"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, digest)
)
"""


LOCK_WAIT_S = 60.0  # how long a run waits for a cache another process holds
_FIRST_WAIT_S = 2.0


def digest(key: dict[str, Any]) -> str:
    canonical = json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def open_project_cache(directory: Path, notice: Callable[[str], object] | None = None) -> Cache:
    """The project's cache in ``directory``, created with its ``.gitignore`` and ``CACHEDIR.TAG`` if need be. A cache
    that cannot be used (a file where the directory should be, no write permission, a file that
    is not a database, one that stays locked by another process) is an InputError naming the
    path, before any work; ``notice`` is told when the cache is locked and the run waits for it."""
    hint = "(fix it, or run without the cache: --instrumental-no-cache)"
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--instrumental-cache-dir: {directory} is not a directory {hint}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in ((".gitignore", _GITIGNORE), ("CACHEDIR.TAG", _CACHEDIR_TAG)):
            if not (directory / name).exists():
                (directory / name).write_text(text, encoding="utf-8")
        return Cache(directory / DATABASE, notice)
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise InputError(f"--instrumental-cache-dir: {directory / DATABASE} cannot be used: {exc} {hint}") from None
        raise InputError(
            f"--instrumental-cache-dir: {directory / DATABASE} stayed locked by another process for "
            f"{LOCK_WAIT_S:g} s (another pytest run using this cache?) {hint}"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise InputError(f"--instrumental-cache-dir: {directory / DATABASE} cannot be used: {exc} {hint}") from None
    except OSError as exc:
        raise InputError(
            f"--instrumental-cache-dir: cannot write in {directory}: {exc.strerror or exc} {hint}"
        ) from None


class Cache:
    """Entries that cannot be read back are misses (generated again); a write that fails turns
    writing off for the run. Both are counted, and ``problems`` says so once at the end."""

    def __init__(self, path: Path, notice: Callable[[str], object] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.unreadable = 0
        self.unwritten: str | None = None
        # autocommit; a short busy timeout first, so that a lock held elsewhere is said, not waited out in silence
        self._db = sqlite3.connect(path, timeout=_FIRST_WAIT_S, isolation_level=None)
        try:
            self._probe()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            if notice is not None:
                notice(f"instrumental: the cache {path} is locked by another process; waiting up to {LOCK_WAIT_S:g} s")
            self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
            self._probe()
        # a generous busy timeout lets concurrent workers wait for each other's writes
        self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")

    def _probe(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")  # a read-only database fails here, not halfway through a run
        self._db.execute("ROLLBACK")

    def get(self, kind: str, key: dict[str, Any], build: Callable[..., T], counted: bool = True) -> T | None:
        """``build(**entry)`` for the entry under ``key``; None when there is none or it cannot be
        read, which counts as unreadable unless not ``counted`` (a look before the run: cost.py)."""
        try:
            row = self._db.execute(
                "SELECT value FROM entries WHERE kind = ? AND digest = ?", (kind, digest(key))
            ).fetchone()
            return None if row is None else build(**json.loads(row[0]))
        except (sqlite3.DatabaseError, ValueError, TypeError):
            self.unreadable += counted
            return None

    def put(self, kind: str, key: dict[str, Any], value: dict[str, Any]) -> None:
        if self.unwritten is not None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO entries (kind, digest, value, created) VALUES (?, ?, ?, ?)",
                (kind, digest(key), json.dumps(value, ensure_ascii=False), time.time()),
            )
        except sqlite3.Error as exc:
            self.unwritten = str(exc)

    def problems(self) -> list[str]:
        """What went wrong with the cache during the run, one line each."""
        lines = []
        if self.unreadable:
            lines.append(f"cache {self.path}: {self.unreadable} entries could not be read and were made again")
        if self.unwritten is not None:
            lines.append(f"cache {self.path}: writing stopped ({self.unwritten}); later results were not cached")
        return lines

    def close(self) -> None:
        self._db.close()


def build_once(target: Path, build: Callable[[Path], None], damage: Callable[[Path], str | None] | None = None) -> Path:
    """``target``, made by ``build(staging directory)`` unless it exists. Processes that need it at
    once (xdist workers, two sessions) take turns on a lock file, so it is built once; it is built
    beside the target and renamed into place, so nobody sees half of it, and what a killed build
    left behind is removed before the next build starts. A target that ``damage`` finds damaged
    (a file cut short by a full disk, say) is set aside as ``<target>.damaged`` and built again."""
    from filelock import FileLock

    if target.is_dir() and (damage is None or damage(target) is None):
        return target
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file where a directory of built files belongs; move it away")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f"{target.name}.lock")):
        if target.is_dir() and damage is not None and damage(target) is not None:
            set_aside(target)
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


def set_aside(directory: Path) -> Path:
    """A damaged ``directory`` moved to ``<directory>.damaged`` (replacing an older one), kept for
    a look, out of the way of the one made again."""
    aside = directory.with_name(f"{directory.name}.damaged")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(directory, aside)
    return aside


def safetensors_damage(directory: Path) -> str | None:
    """What is wrong with the safetensors files in ``directory`` (one cut short, or none there);
    None when each one's header and length agree."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return f"{directory} holds no .safetensors file"
    for path in files:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as exc:
            return f"{path} is damaged ({exc})"
    return None
