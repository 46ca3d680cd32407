"""The files a run writes (the results JSON, the reports, the snapshots' setup), and the one rule
they all follow: a target that exists must be a regular file, never a link, a device, a FIFO or
a directory (checked before any work, so a bad path is a usage error, not a replaced device or a
file overwritten outside the output directory); each file is written whole beside its target
and renamed into place (a run killed while writing leaves the old file or none); and it gets the
user's umask, as any file the user makes.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

MARKDOWN = "report.md"  # the report files of --instrumental-report DIR
HTML = "report.html"
REPORTS = (MARKDOWN, HTML)


def output_problem(path: Path, is_directory: bool, files: Sequence[str] = ()) -> str | None:
    """Why ``path`` (a file, or a directory to write ``files`` in) cannot be written; None if it can."""
    if not is_directory and path.is_symlink():
        return "it is a symbolic link (outputs are never written through links)"
    if path.exists():
        if is_directory and not path.is_dir():
            return "it is a file, not a directory"
        if not is_directory and path.is_dir():
            return "it is a directory"
        if not is_directory and not stat.S_ISREG(path.stat().st_mode):
            return "it exists and is not a regular file (a device, a FIFO or a socket)"
        for name in files if is_directory else ():
            problem = output_problem(path / name, is_directory=False)
            if problem is not None:
                return f"{name} in it: {problem}"
        target = path if path.is_dir() else path.parent
        return None if os.access(target, os.W_OK | os.X_OK) else f"{target} is not writable"
    ancestor = path if is_directory else path.parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # it would be made at the end, and fail: the run's results lost
            return f"{ancestor} is a symbolic link to nothing"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file"
    return None if os.access(ancestor, os.W_OK | os.X_OK) else f"{ancestor} is not writable"


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` by the rule above; a link or special file that appeared at the
    target since the check is replaced, never written through."""
    write_with(path, lambda staging: staging.write_text(text, encoding="utf-8"))


def write_with(path: Path, write: Callable[[Path], object]) -> None:
    """What ``write`` writes to the path it is given (a file of its own beside ``path``, with the
    same extension, which some writers read as the format) put at ``path`` by the rule above."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(Path(staging))
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
