"""Engine servers the session starts and stops: vLLM, SGLang, transformers serve, llama.cpp's
llama-server, or any command that serves the OpenAI API.

Each local model under test gets its own server on 127.0.0.1 and a free port. The server runs
under a guard process (``engine_guard.py``) with its output in a log file; the session waits
(bounded) until ``/v1/models`` or ``/health`` answers, generates through the OpenAI backend, and
at the end closes the guard's pipe: the guard ends the server and all it started, SIGTERM, then
SIGKILL after a grace period. The guard does the same when pytest dies, however it dies, so no
server outlives its session.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from pytest_instrumental.config import EngineConfig
from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import TEXT_LIMIT, load_json
from pytest_instrumental.text import redact, visible

READY_PATHS = ("/v1/models", "/health")
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 12
LOG_LINE_CHARS = 300  # a quoted log line is cut here: a server may print megabytes on one line
_LOG_TAIL_BYTES = 64 * 1024  # only the end of the log is read for the quote


class EngineError(Exception):
    """An engine server that would not start or stopped answering; the message quotes its log."""


def serve_argv(
    options: EngineConfig,
    model: str,
    served_name: str,
    port: int,
    revision: str | None = None,
    adapters: Sequence[Path] = (),
) -> list[str]:
    """The command line that serves ``model`` (a hub id, a directory, or for llama-server a GGUF
    file) at ``revision`` as ``served_name`` on 127.0.0.1:``port``, with the LoRA ``adapters``
    (vLLM, SGLang) each under its directory's name, the pass-through flags last."""
    if options.serve_command:
        values = {
            "model": model,
            "port": str(port),
            "name": served_name,
            "host": "127.0.0.1",
            "revision": revision or "",
        }
        try:
            return [part.format(**values) for part in shlex.split(options.serve_command)]
        except (KeyError, IndexError, ValueError) as exc:
            raise InputError(
                f"--instrumental-serve-command: {exc!r}; "
                "use the placeholders {model}, {port}, {name}, {host}, {revision}"
            ) from None
    host, where = "127.0.0.1", str(port)
    pinned = ["--revision", revision] if revision else []
    if revision and options.engine not in ("vllm", "sglang"):
        raise InputError(
            f"--instrumental-engine {options.engine}: cannot pin revision {revision!r}; use vllm or sglang"
        )
    if options.engine == "vllm":
        base = ["vllm", "serve", model, "--host", host, "--port", where, "--served-model-name", served_name]
    elif options.engine == "sglang":
        base = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", host, "--port", where]
        base += ["--served-model-name", served_name]
    elif options.engine == "transformers-serve":
        # transformers serve names the model by what it was given; ``served_name`` is that.
        base = [_sibling_script("transformers"), "serve", model, "--host", host, "--port", where]
    elif options.engine == "llama-server":
        source = ["-m", model] if model.endswith(".gguf") else ["--hf-repo", model]
        base = ["llama-server", *source, "--host", host, "--port", where, "--alias", served_name]
    else:
        raise InputError(f"--instrumental-engine {options.engine!r} does not start a server")
    return [*base, *pinned, *lora_flags(options.engine, adapters), *options.args]


# the ranks vLLM's --max-lora-rank takes; SGLang takes any
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_flags(engine: str, adapters: Sequence[Path]) -> list[str]:
    """The flags that make vLLM or SGLang serve ``adapters`` (peft directories), each as a model
    named by its directory's name, up to the largest rank among them."""
    if not adapters:
        return []
    rank = max(
        int(load_json(a / "adapter_config.json", TEXT_LIMIT, "a LoRA adapter config").get("r", 1)) for a in adapters
    )
    modules = [f"{a.name}={a}" for a in adapters]
    if engine == "vllm":
        rank = next((r for r in _VLLM_LORA_RANKS if r >= rank), rank)
        return ["--enable-lora", "--lora-modules", *modules, "--max-lora-rank", str(rank)]
    if engine == "sglang":
        return ["--enable-lora", "--lora-paths", *modules, "--max-lora-rank", str(rank)]
    raise InputError(f"--instrumental-engine {engine}: does not serve LoRA adapters; serve merged checkpoints")


def _sibling_script(name: str) -> str:
    """A console script of this Python's environment (a venv's ``bin``), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EngineServer:
    """One server process for one model; ``start`` is idempotent, ``stop`` always safe."""

    def __init__(
        self,
        options: EngineConfig,
        model: str,
        served_name: str,
        label: str,
        revision: str | None = None,
        adapters: Sequence[Path] = (),
    ) -> None:
        self.options = options
        self.model = model
        self.revision = revision
        self.adapters = tuple(adapters)  # LoRA adapters served beside the model
        self.served_name = served_name
        self.label = label  # the model's name in messages and the log file's name
        self.port = 0
        self.argv: list[str] = []
        self.log_path = options.logs_dir / f"{_safe(label)}.log"  # named by its port once started
        self._process: subprocess.Popen[bytes] | None = None
        self._failure: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Start the server and wait until it answers; EngineError (quoting the log) otherwise."""
        if self._failure is not None:
            raise EngineError(self._failure)
        if self._process is not None:
            return
        self.port = free_port()
        self.argv = serve_argv(self.options, self.model, self.served_name, self.port, self.revision, self.adapters)
        self.log_path = self.options.logs_dir / f"{_safe(self.label)}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            log.write(f"$ {redact(shlex.join(self.argv))}\n".encode())  # a key in the command stays out
            log.flush()
            try:
                if shutil.which(self.argv[0]) is None and not Path(self.argv[0]).is_file():
                    raise FileNotFoundError(2, "No such file or directory")
                # The guard (engine_guard.py) runs the server and ends it, and all it started,
                # when this session closes the guard's stdin or dies, however it dies.
                guard = [sys.executable, "-m", "pytest_instrumental.engine_guard", f"{STOP_GRACE_S:g}", "--"]
                self._process = subprocess.Popen(
                    [*guard, *self.argv],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: not sent the terminal's Ctrl-C
                )
            except OSError as exc:
                self._fail(f"cannot run {self.argv[0]!r}: {exc.strerror or exc}")
        atexit.register(self.stop)  # a safety net: the session stops it before
        self._wait_ready()

    def _wait_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.options.startup_timeout_s
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                self._process = None
                self._fail(f"exited with code {code} before answering")
            if any(_answers(f"http://127.0.0.1:{self.port}{path}") for path in READY_PATHS):
                return
            time.sleep(0.5)
        self.stop()
        self._fail(f"did not answer within {self.options.startup_timeout_s:g} s")

    def _fail(self, why: str) -> None:
        self._failure = redact(
            f"{self.options.label} server for {self.label} {why}; log {self.log_path}, last lines:\n"
            + "\n".join(f"    {line}" for line in log_tail(self.log_path))
        )
        raise EngineError(self._failure)

    def stop(self) -> None:
        """Close the guard's stdin: it sends the server and everything it started SIGTERM, and
        SIGKILL after the grace period. A guard that does not end in time is killed with its group."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(STOP_GRACE_S + 10)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, sig)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log, as a message may quote them: read from the log's last 64 KiB,
    decoded leniently, secrets redacted, invisible characters made visible, each line cut at
    LOG_LINE_CHARS; none when it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            tail = deque(handle.read().splitlines(), maxlen=lines)
    except OSError:
        return []
    quoted = []
    for raw in tail:
        line = visible(redact(raw.decode("utf-8", "replace").rstrip()))
        quoted.append(
            line if len(line) <= LOG_LINE_CHARS else f"{line[:LOG_LINE_CHARS]}... (cut; the log has it whole)"
        )
    return quoted


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
