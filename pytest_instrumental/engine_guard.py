"""The guard of one engine server: ``python -m pytest_instrumental.engine_guard GRACE -- COMMAND...``.

The session starts this small process instead of the server, and the guard starts the server.
It makes sure that nothing the server command starts outlives the session, however the session
ends:

- it is a child subreaper (Linux), so a launcher's forked or daemonised server, which leaves the
  launcher's process group and parent, becomes the guard's child, not init's;
- it ends everything below it when the session closes its end of the guard's stdin: on a clean
  stop, and also when pytest dies by SIGKILL, since the kernel closes a dead process's pipes;
- it ends them with SIGTERM, then SIGKILL after GRACE seconds, so a server that ignores SIGTERM
  goes too;
- if the guard itself is killed, the kernel sends the server SIGKILL (its parent-death signal).

While the server runs, the guard waits. A launcher that exits 0 leaving its server running is
fine; when nothing below the guard is left, the guard exits with the command's exit code, which
the session reports as the server's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _die_with_guard() -> None:
    """In the server, before exec: SIGKILL when the guard dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc; none elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


class Guard:
    def __init__(self, command: list[str], grace_s: float) -> None:
        self.grace_s = grace_s
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        self.server = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_guard)
        self.code: int | None = None  # the command's exit code, once it exited
        self.session_ended = threading.Event()

    def reap(self) -> None:
        """Collect exited children (orphans reparented here too), noting the command's code."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.server.pid:
                self.code = os.waitstatus_to_exitcode(status)

    def stop_all(self) -> None:
        """SIGTERM to everything below, SIGKILL to what is left after the grace period."""
        for sig, wait_s in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, 5.0)):
            for pid in descendants(os.getpid()):
                with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while descendants(os.getpid()) and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
            self.reap()

    def run(self) -> int:
        while not self.session_ended.wait(0.1):
            self.reap()
            if self.code is not None and (self.code != 0 or not descendants(os.getpid())):
                break  # the command failed, or it and everything it started are gone
        self.stop_all()
        return self.code if self.code is not None else 0


def main(argv: list[str]) -> int:
    grace_s, separator, command = float(argv[0]), argv[1], argv[2:]
    if separator != "--" or not command:
        print("usage: python -m pytest_instrumental.engine_guard GRACE -- COMMAND...", file=sys.stderr)
        return 2
    guard = Guard(command, grace_s)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: guard.session_ended.set())

    def watch_session() -> None:
        while os.read(0, 4096):  # unbuffered: ends when the session closes the pipe, or dies
            pass
        guard.session_ended.set()

    threading.Thread(target=watch_session, daemon=True).start()
    return guard.run()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # not sys.exit: the watching thread may still be blocked in its read
