"""Engine servers: their command lines, and the lifecycle of a real server process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_instrumental.config import EngineConfig
from pytest_instrumental.engines import EngineError, EngineServer, serve_argv
from pytest_instrumental.errors import InputError
from tests.helpers import live_processes

CHAT_SERVER = Path(__file__).resolve().parent / "chat_server.py"


def options(engine: str, *args: str, command: str | None = None, tmp: Path = Path("/tmp")) -> EngineConfig:
    return EngineConfig(
        engine=engine, args=tuple(args), serve_command=command, startup_timeout_s=20, logs_dir=tmp / "engines"
    )


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        (
            "vllm",
            "vllm serve Qwen/Qwen3-4B --host 127.0.0.1 --port 8123 --served-model-name qwen3-4b "
            "--tensor-parallel-size=2 --max-model-len=16384",
        ),
        (
            "sglang",
            f"{sys.executable} -m sglang.launch_server --model-path Qwen/Qwen3-4B --host 127.0.0.1 --port 8123 "
            "--served-model-name qwen3-4b --tensor-parallel-size=2 --max-model-len=16384",
        ),
        (
            "llama-server",
            "llama-server --hf-repo Qwen/Qwen3-4B --host 127.0.0.1 --port 8123 --alias qwen3-4b "
            "--tensor-parallel-size=2 --max-model-len=16384",
        ),
    ],
)
def test_engine_command_lines(engine: str, expected: str) -> None:
    flags = ("--tensor-parallel-size=2", "--max-model-len=16384")
    assert " ".join(serve_argv(options(engine, *flags), "Qwen/Qwen3-4B", "qwen3-4b", 8123)) == expected


def test_transformers_serve_runs_from_this_environment_and_llama_server_takes_a_gguf() -> None:
    argv = serve_argv(options("transformers-serve"), "/models/smol", "/models/smol", 8123)
    assert argv[1:] == ["serve", "/models/smol", "--host", "127.0.0.1", "--port", "8123"]
    assert argv[0] == str(Path(sys.executable).parent / "transformers")
    assert serve_argv(options("llama-server"), "/w/smol.gguf", "smol", 1)[:3] == ["llama-server", "-m", "/w/smol.gguf"]


def test_revisions_are_pinned_where_the_engine_can_pin_them() -> None:
    assert serve_argv(options("vllm", "--seed=0"), "Qwen/Qwen3-4B", "q", 1, "abc123")[-3:] == [
        "--revision",
        "abc123",
        "--seed=0",
    ]
    with pytest.raises(InputError, match="cannot pin revision 'abc123'"):
        serve_argv(options("llama-server"), "Qwen/Qwen3-4B", "q", 1, "abc123")


def test_a_custom_serve_command_gets_its_placeholders_filled() -> None:
    custom = options("local", command="my-server --model {model} --listen {host}:{port} --name '{name}'")
    assert serve_argv(custom, "/m", "smol 135m", 9) == [
        "my-server",
        "--model",
        "/m",
        "--listen",
        "127.0.0.1:9",
        "--name",
        "smol 135m",
    ]
    with pytest.raises(InputError, match="placeholders"):
        serve_argv(options("local", command="srv {gpu}"), "/m", "m", 9)


@pytest.mark.slow
def test_a_server_starts_answers_and_is_stopped_with_its_whole_process_group(tmp_path: Path) -> None:
    # The command starts a child that serves: stopping must reach the child too.
    command = f"sh -c '{sys.executable} {CHAT_SERVER} {{port}} & wait'"
    server = EngineServer(options("local", command=command, tmp=tmp_path), "m", "m", "m")
    server.start()
    try:
        assert server.running
        import urllib.request

        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as reply:
            assert reply.status == 200
        group = os.getpgid(server._process.pid)  # type: ignore[union-attr]
    finally:
        server.stop()
    assert not server.running
    assert _live_members(group) == []  # nothing of the group is left running
    assert server.log_path.read_text(encoding="utf-8").startswith("$ sh -c ")


@pytest.mark.slow
def test_a_server_that_exits_is_an_error_quoting_its_log(tmp_path: Path) -> None:
    command = f"{sys.executable} -c \"import sys; print('CUDA out of memory'); sys.exit(3)\""
    server = EngineServer(options("local", command=command, tmp=tmp_path), "m", "m", "m")
    with pytest.raises(EngineError, match=r"(?s)custom server for m exited with code 3.*CUDA out of memory"):
        server.start()
    with pytest.raises(EngineError):  # a failed server is not started again
        server.start()


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    never = EngineConfig(
        engine="local",
        serve_command=f"{sys.executable} -c 'import time; time.sleep(60)'",
        startup_timeout_s=1.5,
        logs_dir=tmp_path,
    )
    server = EngineServer(never, "m", "m", "m")
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"did not answer within 1\.5 s"):
        server.start()
    assert time.monotonic() - started < 10 and not server.running


def test_a_missing_engine_program_is_an_error_naming_it(tmp_path: Path) -> None:
    server = EngineServer(options("local", command="no-such-engine-xyz {port}", tmp=tmp_path), "m", "m", "m")
    with pytest.raises(EngineError, match="cannot run 'no-such-engine-xyz'"):
        server.start()


@pytest.mark.slow
def test_a_session_killed_hard_takes_its_server_with_it(tmp_path: Path) -> None:
    """pytest killed with SIGKILL runs no cleanup; the guard, seeing its pipe closed, stops the server."""
    if sys.platform != "linux":
        pytest.skip("parent-death signals are Linux's")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pytest_instrumental.config import EngineConfig\n"
        "from pytest_instrumental.engines import EngineServer\n"
        f"options = EngineConfig(engine='local', serve_command='{sys.executable} {CHAT_SERVER} {{port}}', "
        f"startup_timeout_s=20, logs_dir=Path('{tmp_path}'))\n"
        "server = EngineServer(options, 'm', 'm', 'm')\n"
        "server.start()\n"
        "print(server._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    session = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert session.stdout is not None
    server_pid = int(session.stdout.readline())
    session.send_signal(signal.SIGKILL)
    session.wait()
    for _ in range(50):
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("the server outlived its session")


def _live_members(group: int, wait_s: float = 5.0) -> list[int]:
    """The processes of a process group that are not dead or zombies, after waiting for them."""
    deadline = time.monotonic() + wait_s
    while True:
        live = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] not in ("Z", "X"):
                live.append(int(stat.parent.name))
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


LAUNCHER = """
import subprocess, sys
# a launcher as many are: it starts the real server in a session of its own, and exits
subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session=True)
"""
STUBBORN = """
import runpy, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a server that ignores SIGTERM
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["a launcher that daemonises it", "a server that ignores SIGTERM"])
@pytest.mark.parametrize("end", ["SIGKILL", "SIGTERM", "stop"])
def test_no_server_outlives_its_session(tmp_path: Path, how: str, end: str) -> None:
    """However the session ends (killed hard, terminated, or stopping its servers), the server
    and everything its command started are gone."""
    if sys.platform != "linux":
        pytest.skip("subreapers and /proc are Linux's")
    wrapper = tmp_path / ("launcher.py" if how.startswith("a launcher") else "stubborn.py")
    wrapper.write_text(LAUNCHER if how.startswith("a launcher") else STUBBORN, encoding="utf-8")
    marker = f"{CHAT_SERVER} {{port}} 0.0 {tmp_path.name}"  # the server's own command line, findable
    script = (
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from pytest_instrumental import config, engines\n"
        "engines.STOP_GRACE_S = 1.0\n"
        f"command = '{sys.executable} {wrapper} {marker}'\n"
        f"options = config.EngineConfig(engine='local', serve_command=command, startup_timeout_s=20, "
        f"logs_dir=Path('{tmp_path}'))\n"
        "server = engines.EngineServer(options, 'm', 'm', 'm')\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "server.start()\n"
        "print(server.port, flush=True)\n"
        # "stop" waits for the test to have seen the server running (a line on stdin)
        f"{'sys.stdin.readline(); server.stop()' if end == 'stop' else 'time.sleep(60)'}\n"
    )
    session = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert session.stdout is not None
    port = session.stdout.readline().strip()
    assert port, "the server did not start"
    pattern = f"{CHAT_SERVER} {port} 0.0 {tmp_path.name}"
    assert live_processes(pattern), "the server is not running"
    if end == "stop":
        assert session.stdin is not None
        session.stdin.write("stop\n")
        session.stdin.flush()
    else:
        session.send_signal(getattr(signal, end))
    session.wait(30)
    deadline = time.monotonic() + 20
    while live_processes(pattern) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = live_processes(pattern)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"the server outlived its session ({how}, {end})"
