"""Whatever characters a model or server sends, they are stored, cached, judged and written
without error, shown harmlessly, and no echo of a secret survives."""

import base64
import json
import os
import re
from pathlib import Path

import pytest

from pytest_instrumental.text import clean, redact, visible
from tests.chat_server import running_chat_server

SECRET = "sk-live-hostile-test-31337"
HOSTILE = (
    "lone \ud800 surrogate, NUL \x00 here, \x1b[31mred\x1b[0m, "
    "bidi \u202eevil\u202c override, zero\u200bwidth, my key ends ...hostile-test-31337 " + "a long line " * 2000
)


def test_cleaning_and_showing_text() -> None:
    assert clean("a\ud800b") == "a\ufffdb"
    assert visible("a\x00b\u202ec\nd\te") == "a<U+0000>b<U+202E>c\nd\te"


def test_any_echo_of_a_secret_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert redact(f"key {SECRET}!") == "key <OPENAI_API_KEY>!"
    assert redact("provided: ...hostile-test-31337.") == "provided: ...<OPENAI_API_KEY>."
    assert redact("sk-live-hostile and test-31337") == "<OPENAI_API_KEY> and <OPENAI_API_KEY>"
    assert redact("a host of tests") == "a host of tests"  # runs of the key shorter than an echo stay


@pytest.mark.slow
def test_hostile_model_output_goes_everywhere_without_error_or_harm(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with running_chat_server() as server:
        server.answer = HOSTILE
        args = [
            "--instrumental",
            "--model=openai:local",
            f"--instrumental-base-url={server.base_url}",
            "--judge=offline",
            "-k",
            "evading_shutdown-01",
            "--instrumental-json=out.json",
            "--instrumental-report=report",
            "--junitxml=junit.xml",
            "--instrumental-snapshot",
            "--snapshot-update",
        ]
        first = pytester.runpytest_subprocess(*args)
        again = pytester.runpytest_subprocess(*args)  # the cached answers, read back
    for result in (first, again):
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=3)
        assert "Traceback" not in result.stdout.str() + result.stderr.str()
    items = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))["items"]
    assert all("lone \ufffd surrogate, NUL \x00 here" in i["response"] for i in items)  # data kept
    page = (pytester.path / "report" / "report.html").read_text(encoding="utf-8")
    assert "\u202e" not in page and "\x00" not in page and "\x1b" not in page
    assert "bidi <U+202E>evil<U+202C> override" in page.replace("&lt;", "<").replace("&gt;", ">")
    written = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        data = path.read_bytes()
        assert b"hostile-test-31337" not in data and b"test-31337" not in data, path
    assert "test-31337" not in first.stdout.str() + first.stderr.str()
    assert os.environ["OPENAI_API_KEY"] == SECRET


def test_credentials_in_a_base_url_are_used_and_never_stored_or_printed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with running_chat_server() as server:
        server.answer = "the proxy said: welcome alice-proxy-user, password s3cret-pass@word"
        server.echo_authorization = True  # the header the client made of them, echoed back
        url = server.base_url.replace("http://", "http://alice-proxy-user:s3cret-pass%40word@")
        args = ["--instrumental", "--model=openai:local", f"--instrumental-base-url={url}", "--judge=offline"]
        args += ["-k", "evading_shutdown-01", "--instrumental-json=out.json", "--instrumental-report=report"]
        result = pytester.runpytest_subprocess(*args, "--instrumental-snapshot", "--snapshot-update", "-v")
        assert result.ret == 0, result.stdout.str()
        basic = base64.b64encode(b"alice-proxy-user:s3cret-pass@word")
        assert set(server.authorizations) == {f"Basic {basic.decode()}"}  # sent as documented, decoded
    document = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    assert document["run"]["generation"]["openai:local"]["base_url"] == server.base_url
    assert "you sent Authorization: Basic <URL credentials>" in document["items"][0]["response"]
    for path in [p for p in pytester.path.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert b"s3cret" not in data and b"alice-proxy" not in data and basic not in data, path
    shown = result.stdout.str() + result.stderr.str()
    assert "s3cret" not in shown and basic.decode() not in shown


def test_a_key_in_a_base_urls_query_string_is_used_and_never_stored_or_printed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with running_chat_server() as server:
        server.echo_path = True  # the server echoes the query string, key and all
        url = f"{server.base_url}?api_key=sk-query-7777abcd&team=red%2Bblue"
        args = ["--instrumental", "--model=openai:local", f"--instrumental-base-url={url}", "--judge=offline"]
        args += ["-k", "evading_shutdown-01", "--instrumental-json=out.json", "--instrumental-report=report"]
        result = pytester.runpytest_subprocess(*args, "-v")
        assert result.ret == 0, result.stdout.str()
        assert server.paths and all("api_key=sk-query-7777abcd" in path for path in server.paths)  # it was sent
    result.stdout.fnmatch_lines([f"*{server.base_url}?<redacted>*"])  # the plan line
    document = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    assert document["run"]["generation"]["openai:local"]["base_url"] == f"{server.base_url}?<redacted>"
    assert "(you asked at /v1/chat/completions?<URL credentials>)" in document["items"][0]["response"]
    for path in [p for p in pytester.path.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert b"7777abcd" not in data and b"red%2Bblue" not in data and b"red+blue" not in data, path
    shown = result.stdout.str() + result.stderr.str()
    assert "7777abcd" not in shown and "red%2Bblue" not in shown


def test_a_base_url_holding_a_line_break_is_a_usage_error_naming_the_option(pytester: pytest.Pytester) -> None:
    url = "http://alice:s3cret-word@127.0.0.1:9/v1\r\nX-Injected: yes"
    result = pytester.runpytest_subprocess("--instrumental", "--model=openai:local", f"--instrumental-base-url={url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --instrumental-base-url: the URL holds whitespace or control characters"])
    shown = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in shown and "Traceback" not in shown and "s3cret" not in shown


TERMINAL_ATTACK = "\x1b[2J\r=== 76 passed in 0.01s ===\x00\x1b]0;title\x07 \u202eevil"


def test_server_text_in_a_usage_error_reaches_the_terminal_inert(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, reference_runs: Path
) -> None:
    """Model ids from /v1/models and a judge's preflight error, holding a screen clear, a carriage
    return before a fake summary, NUL, a window-title escape and an RTL override."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with running_chat_server() as server:
        server.served = [f"model{TERMINAL_ATTACK}"]
        models = pytester.runpytest_subprocess(
            "--instrumental", "--model=openai:qwen3", f"--instrumental-base-url={server.base_url}"
        )
        server.force_status = 500
        server.error_message = f"judge down{TERMINAL_ATTACK}"
        judge = pytester.runpytest_subprocess(
            *("--instrumental", f"--instrumental-replay={reference_runs}", "--judge=openai:gpt-5.2"),
            f"--instrumental-judge-base-url={server.base_url}",
            "--instrumental-max-retries=0",
        )
    for result, said in (
        (models, "*does not serve 'qwen3'; it serves *"),
        (judge, "*answered HTTP 500 (* judge down*"),
    ):
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([said])
        shown = result.stdout.str() + result.stderr.str()
        for raw in ("\x1b", "\r", "\x00", "\x07", "\u202e"):
            assert raw not in shown, repr(raw)
        # shown as marks (a one-line message may also fold the carriage return into a space)
        assert re.search(r"<U\+001B>\[2J(<U\+000D>| )=== 76 passed in 0\.01s ===<U\+0000>", shown), shown
