"""The files a run reads that a user names or puts in place (suffix, defence and prefill texts,
attack data, vector files, baselines, replayed runs, the snapshots and their setup), and the one
rule they all follow: each is a regular file (a FIFO would block the run forever, a device such as
/dev/zero would fill memory), no larger than its kind's limit, and read only when the run uses it
(suffixes.Texts). JSON nested deeper than the parser can follow is bad input like any other. Each
failure is an InputError naming the file, before any work.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from pytest_instrumental.errors import InputError

TEXT_LIMIT = 1 << 20  # a suffix, a defence or a prefill: 1 MiB, a hundred times the longest bundled one
DATA_LIMIT = 512 << 20  # a results JSON, a recorded run's log, attack data, snapshots: 512 MiB
VECTOR_LIMIT = 64 << 20  # a steering vector: one hidden state's numbers (a 30B model's: 20 KiB)


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; ``what`` (an option, or a
    kind of file) starts the message otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, a device or a socket"
        raise InputError(f"{what}: {path} is not a regular file (it is {kind})")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # what it holds now, which may have grown since
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{what}: {path} is larger than {_size(limit)}, the most such a file may hold")
    return data


def read_text(path: Path, limit: int, what: str) -> str:
    """``read_bytes`` as UTF-8 text."""
    try:
        return read_bytes(path, limit, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_json(path: Path, limit: int, what: str) -> Any:
    """``read_text``, parsed as JSON."""
    return parse_json(read_text(path, limit, what), f"{what}: {path}")


def parse_json(text: str, where: str) -> Any:
    """``text`` parsed as JSON; ``where`` (the file, a line of it) starts the message otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{where}: its JSON is nested too deeply to read") from None


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB"
