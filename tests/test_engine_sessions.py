"""Sessions that serve their models through an engine server, end to end: the real
``transformers serve`` with the embedded model, and a stand-in server for the failure paths."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chat_server import running_chat_server
from tests.helpers import live_processes

CHAT_SERVER = Path(__file__).resolve().parent / "chat_server.py"


def no_server_left(marker: str) -> bool:
    """Whether no process whose command line holds ``marker`` is running (zombies aside), after
    waiting up to 5 s for one to end."""
    for _ in range(50):
        if not live_processes(marker):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_the_embedded_model_through_a_real_transformers_serve(
    pytester: pytest.Pytester, smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    common = [
        "--instrumental",
        "--suffix=anti_ic",
        "-k",
        "evading_shutdown-01 or deceptive_behavior-02",
        "--instrumental-max-new-tokens=8",
        f"--instrumental-models-dir={smollm2_dir.parent}",
    ]
    served = pytester.runpytest_subprocess(
        *common, "--instrumental-engine=transformers-serve", "--instrumental-json=served.json"
    )
    served.assert_outcomes(passed=2)
    assert no_server_left(str(smollm2_dir))
    log = next((pytester.path / ".instrumental-cache" / "engines").glob("smollm2-135m*.log")).read_text(
        encoding="utf-8"
    )
    assert log.startswith("$ ") and " serve " in log.splitlines()[0]
    document = json.loads((pytester.path / "served.json").read_text(encoding="utf-8"))
    assert document["run"]["generation"]["smollm2-135m"]["served_by"] == "transformers-serve"
    # The same greedy answers as the in-process loop.
    local = pytester.runpytest_subprocess(*common, "--instrumental-no-cache", "--instrumental-json=local.json")
    local.assert_outcomes(passed=2)
    answers = {
        name: {i["scenario"]: i["response"] for i in json.loads((pytester.path / name).read_text())["items"]}
        for name in ("served.json", "local.json")
    }
    assert answers["served.json"] == answers["local.json"]
    # A rerun is served from the cache: the server's port changes, the cache key does not.
    again = pytester.runpytest_subprocess(*common, "--instrumental-engine=transformers-serve")
    again.assert_outcomes(passed=2)
    assert "generating smollm2-135m" not in again.stderr.str()


@pytest.mark.slow
def test_a_server_that_does_not_come_up_is_a_usage_error_quoting_its_log(
    pytester: pytest.Pytester, smollm2_dir: Path
) -> None:
    command = f"{sys.executable} -c \"print('RuntimeError: CUDA out of memory'); raise SystemExit(1)\""
    result = pytester.runpytest_subprocess(
        "--instrumental",
        "--judge=offline",
        f"--instrumental-serve-command={command}",
        f"--instrumental-models-dir={smollm2_dir.parent}",  # converted once per user, not per test
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: custom server for smollm2-135m exited with code 1 before answering; log *", "*CUDA out of memory"]
    )
    assert "Traceback" not in result.stderr.str()


@pytest.mark.slow
def test_ctrl_c_mid_run_stops_the_server(pytester: pytest.Pytester, smollm2_dir: Path) -> None:
    marker = f"{CHAT_SERVER} [0-9]+ 30"  # the server's command line, not the session's ({port} unfilled)
    command = f"{sys.executable} {CHAT_SERVER} {{port}} 30"  # each answer takes 30 s: the run is mid-way
    args = ["--instrumental", "--judge=offline", "--suffix=anti_ic", f"--instrumental-serve-command={command}"]
    args.append(f"--instrumental-models-dir={smollm2_dir.parent}")
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args], cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(200):
            if live_processes(marker):
                break
            time.sleep(0.1)
        time.sleep(1.0)  # requests are in flight
        session.send_signal(signal.SIGINT)
        output = session.communicate(timeout=60)[0].decode()
    finally:
        session.kill()
    assert "KeyboardInterrupt" in output
    assert no_server_left(marker)


def test_an_unreachable_openai_server_ends_the_session_in_seconds(pytester: pytest.Pytester) -> None:
    with running_chat_server() as server:
        port = server.server_address[1]
    url = f"http://someone:hunter2@127.0.0.1:{port}/v1"  # nothing listens there any more
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--instrumental", "--model=openai:local", f"--instrumental-base-url={url}")
    assert time.monotonic() - started < 30
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --model openai:local: cannot reach http://127.0.0.1:{port}/v1 (*"])
    assert "hunter2" not in result.stderr.str() + result.stdout.str()


@pytest.mark.slow
def test_a_wrong_base_url_or_model_is_named(pytester: pytest.Pytester) -> None:
    with running_chat_server() as server:
        wrong_path = pytester.runpytest_subprocess(
            "--instrumental",
            "--model=openai:local",
            f"--instrumental-base-url={server.base_url.removesuffix('/v1')}/api",
        )
        assert wrong_path.ret == pytest.ExitCode.USAGE_ERROR
        wrong_path.stderr.fnmatch_lines(["*answered HTTP 404 (is the base URL right? it usually ends in /v1) (*"])
        wrong_model = pytester.runpytest_subprocess(
            "--instrumental", "--model=openai:qwen3", f"--instrumental-base-url={server.base_url}"
        )
        assert wrong_model.ret == pytest.ExitCode.USAGE_ERROR
        wrong_model.stderr.fnmatch_lines(["*does not serve 'qwen3'; it serves local"])


@pytest.mark.slow
def test_a_failed_start_quotes_a_bounded_log_without_the_key(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, smollm2_dir: Path
) -> None:
    """A key written into the serve command, a server printing 3 MB on one line and a terminal
    escape: the log and the message hold none of the key, and the quote stays short and inert."""
    key = "sk-serve-command-secret-4242"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    script = "import sys; print('x' * 3_000_000); print('\\x1b]0;pwned\\x07 the key is ' + sys.argv[-1]); sys.exit(1)"
    command = f'{sys.executable} -c "{script}" --api-key {key}'
    result = pytester.runpytest_subprocess(
        "--instrumental",
        "--judge=offline",
        f"--instrumental-serve-command={command}",
        f"--instrumental-models-dir={smollm2_dir.parent}",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    shown = result.stdout.str() + result.stderr.str()
    assert key not in shown and "\x1b" not in shown
    assert len(shown) < 20_000
    result.stderr.fnmatch_lines(
        [
            "    " + "x" * 300 + "... (cut; the log has it whole)",
            "*<U+001B>]0;pwned<U+0007> the key is <OPENAI_API_KEY>",
        ]
    )
    (log,) = (pytester.path / ".instrumental-cache").rglob("*.log")
    assert key.encode() not in log.read_bytes().splitlines()[0]
