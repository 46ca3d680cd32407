"""Faults of the disk and the cache, injected: each ends in one clear line and loses nothing."""

import json
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest


def _link(name: str) -> Callable[[Path], None]:
    """A symbolic link at an output's target, pointing at a file outside the output directory."""

    def make(root: Path) -> None:
        (root / "outside.txt").write_text("not yours to overwrite")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(root / "outside.txt")

    return make


@pytest.mark.parametrize(
    ("make", "option", "problem"),
    [
        (lambda p: (p / "out").write_text("x"), "--instrumental-report=out", "it is a file, not a directory"),
        (lambda p: (p / "out.json").mkdir(), "--instrumental-json=out.json", "it is a directory"),
        (lambda p: (p / "blocker").write_text("x"), "--instrumental-json=blocker/sub/out.json", "blocker is a file"),
        (lambda p: (p / "snaps").write_text("x"), "--instrumental-snapshot-dir=snaps", "it is a file, not a directory"),
        (lambda p: os.mkfifo(p / "fifo"), "--instrumental-json=fifo", "it exists and is not a regular file *"),
        (
            lambda p: (p / "gone").symlink_to(p / "nowhere"),
            "--instrumental-json=gone/out.json",
            "*gone is a symbolic link to nothing",
        ),
        (
            lambda p: (p / "gone").symlink_to(p / "nowhere"),
            "--instrumental-report=gone",
            "*gone is a symbolic link to nothing",
        ),
        (_link("out.json"), "--instrumental-json=out.json", "it is a symbolic link (outputs are never written *"),
        (_link("out/report.md"), "--instrumental-report=out", "report.md in it: it is a symbolic link *"),
        (_link("snaps/instrumental.ambr"), "--instrumental-snapshot-dir=snaps", "instrumental.ambr in it: it is a *"),
        (
            _link("snaps/instrumental.setup.json"),
            "--instrumental-snapshot-dir=snaps",
            "instrumental.setup.json in it: it is a symbolic link *",
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    pytester: pytest.Pytester, small_replay_args: list[str], make: object, option: str, problem: str
) -> None:
    make(pytester.path)  # type: ignore[operator]
    result = pytester.runpytest(*small_replay_args, option, "--instrumental-snapshot")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    flag, _, path = option.partition("=")
    result.stderr.fnmatch_lines([f"ERROR: {flag}: cannot write *{path}: {problem}"])
    assert "Traceback" not in result.stderr.str()
    outside = pytester.path / "outside.txt"
    assert not outside.exists() or outside.read_text() == "not yours to overwrite"


def test_outputs_get_the_users_umask(pytester: pytest.Pytester, small_replay_args: list[str]) -> None:
    previous = os.umask(0o027)
    try:
        result = pytester.runpytest(*small_replay_args, "--instrumental-json=out.json", "--instrumental-report=report")
    finally:
        os.umask(previous)
    assert result.ret == pytest.ExitCode.OK
    for written in ("out.json", "report/report.md", "report/report.html"):
        assert stat.S_IMODE((pytester.path / written).stat().st_mode) == 0o640, written
    assert not list(pytester.path.glob("**/.*.tmp"))  # nothing left beside them


def test_a_write_that_fails_at_the_end_comes_after_the_summary(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    pytester.makeconftest(
        """
        import pytest, shutil
        from pathlib import Path

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):
            shutil.rmtree("out", ignore_errors=True)
            Path("out").write_text("the disk changed under the run")
        """
    )
    result = pytester.runpytest(*small_replay_args, "--instrumental-json=out/run.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*judged (*", "judge: gpt-5.2 (replayed verdicts)", "ERROR: cannot write the results JSON out/run.json: *"]
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d.write_text("a file"), "*/cache is not a directory (fix it, or run without the cache: *"),
        (
            lambda d: (d.mkdir(), (d / "cache.sqlite").write_bytes(b"not a database" * 100)),
            "*/cache/cache.sqlite cannot be used: file is not a database (fix it, *",
        ),
    ],
)
def test_an_unusable_cache_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, small_replay_args: list[str], make: object, problem: str
) -> None:
    make(pytester.path / "cache")  # type: ignore[operator]
    args = [*small_replay_args, "--instrumental-cache-dir=cache", "--judge=offline"]
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --instrumental-cache-dir: {problem}"])
    # a replay that needs no cache does not touch it
    assert pytester.runpytest(*small_replay_args, "--instrumental-cache-dir=cache").ret == 0


def test_cache_rows_that_do_not_decode_are_made_again_and_said_once(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    args = [*small_replay_args, "--judge=offline"]
    first = pytester.runpytest(*args)
    (counted,) = [line for line in first.outlines if " judged (" in line]
    assert counted.endswith(", 0 errors")
    with sqlite3.connect(pytester.path / ".instrumental-cache" / "cache.sqlite") as db:
        db.execute("UPDATE entries SET value = '{\"decision\": [broken' WHERE rowid % 2 = 0")
        db.execute("UPDATE entries SET value = '{\"no_such_field\": 1}' WHERE rowid % 2 = 1")
    again = pytester.runpytest(*args)
    assert again.ret == 0
    unreadable = counted.split()[0]
    again.stdout.fnmatch_lines([counted, f"*cache.sqlite: {unreadable} entries could not be read and were made again"])
    assert pytester.runpytest(*args).stdout.str().count("could not be read") == 0  # written anew


def test_a_damaged_reference_log_is_counted_and_reported(pytester: pytest.Pytester, reference_runs: Path) -> None:
    import shutil

    run = pytester.path / "runs" / "Qwen3-4B-Instruct-2507_anti_ic_max_15_20260103_114745"
    shutil.copytree(reference_runs / run.name, run)
    log = run / "stdout.log"
    data = log.read_bytes()
    second = data.index(b"<result>", data.index(b"</result>"))
    damaged = data[:second].replace(b"</judge_reason>", b"</judge_reas", 1)  # the first record: named
    nameless = data[second:].replace(b"<task_prompt>", b"<task_promp>", 1).replace(b"</result>", b"", 1)
    log.write_bytes(damaged + nameless)
    result = pytester.runpytest("--instrumental", "--instrumental-replay=runs", "-k", "deceptive_behavior")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*deceptive_behavior-01: *stdout.log: record 1: damaged record: its fields are not the reference run's*",
            "* judged (*), 1 errors",
            "*stdout.log: record 2: damaged record (it has no </result> before the next <result>) that names no *",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_baseline_that_cannot_be_compared_fails_the_gate_saying_why(
    pytester: pytest.Pytester, reference_runs: Path
) -> None:
    args = ["--instrumental", f"--instrumental-replay={reference_runs}", "--model=Qwen3-4B-Base"]
    assert pytester.runpytest(*args, "--instrumental-json=all.json").ret == 0
    assert pytester.runpytest(*args, "--instrumental-subset=paper", "--instrumental-json=paper.json").ret == 0
    other_set = pytester.runpytest(*args, "--instrumental-baseline=paper.json")
    assert other_set.ret == pytest.ExitCode.TESTS_FAILED
    other_set.stdout.fnmatch_lines(
        ["GATE FAILED: the baseline cannot be compared: it ran another scenario set (sha256 *, this run *"]
    )
    document = json.loads((pytester.path / "all.json").read_text(encoding="utf-8"))
    document["items"] = [{**i, "model": "Someone-Else"} for i in document["items"]]
    document["run"]["manifest"]["scenarios"].pop("sha256")
    (pytester.path / "elsewhere.json").write_text(json.dumps(document), encoding="utf-8")
    disjoint = pytester.runpytest(*args, "--instrumental-baseline=elsewhere.json")
    assert disjoint.ret == pytest.ExitCode.TESTS_FAILED
    disjoint.stdout.fnmatch_lines(
        ["GATE FAILED: the baseline cannot be compared: it shares no item (model, suffix and scenario) with this run *"]
    )
    assert pytester.runpytest(*args, "--instrumental-baseline=all.json").ret == 0  # the same set: compared


@pytest.mark.slow
def test_a_server_that_dies_mid_run_costs_seconds_and_a_rerun_completes_from_the_cache(
    pytester: pytest.Pytester,
) -> None:
    import threading
    import time

    from tests.chat_server import ChatServer

    def serve(port: int = 0) -> ChatServer:
        server = ChatServer(port, delay_s=0.1)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    server = serve()
    port = server.server_address[1]
    args = ["--instrumental", "--model=openai:local", f"--instrumental-base-url={server.base_url}", "--judge=offline"]
    args += ["-k", "evading_shutdown", "--instrumental-concurrency=2", "--instrumental-max-retries=1"]

    server.die_after = 20  # it dies mid-run
    started = time.monotonic()
    died = pytester.runpytest_subprocess(*args)
    assert time.monotonic() - started < 60
    outcomes = died.parseoutcomes()
    assert outcomes["passed"] + outcomes["failed"] == 60  # every item counted
    assert 0 < outcomes["failed"] < 60
    died.stdout.fnmatch_lines([f"*not sent: http://127.0.0.1:{port}/v1 stopped answering (3 requests in a row failed)"])
    revived = serve(port)
    try:
        again = pytester.runpytest_subprocess(*args)
        again.assert_outcomes(passed=60)
        assert sum(revived.attempts.values()) == outcomes["failed"]  # only what was missing
    finally:
        revived.shutdown()
        revived.server_close()


def test_an_item_whose_evaluation_breaks_is_still_counted(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    pytester.makeconftest(
        """
        from pytest_instrumental.evaluation import Evaluation

        original = Evaluation.outcomes

        def outcomes(self, request):
            if request.key.scenario == "evading_shutdown-02":
                raise RuntimeError("a fault of our own")
            return original(self, request)

        Evaluation.outcomes = outcomes
        """
    )
    result = pytester.runpytest_subprocess(*small_replay_args)  # a process of its own: the patch must not leak
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*evading_shutdown-02: internal error: RuntimeError: a fault of our own", "* judged (*), 1 errors"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_run_stopped_halfway_reports_and_writes_what_finished_and_fails(pytester: pytest.Pytester, stop: str) -> None:
    """Ctrl-C, or SIGTERM (a cancelled CI job), while a model generates: the answers generated so
    far are judged and summarised, the results JSON and the reports are written and marked
    incomplete, the gate fails and the exit code is not 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.chat_server import running_chat_server

    with running_chat_server() as server:
        server.delay_s = 0.2
        args = ["--instrumental", "--model=openai:local", f"--instrumental-base-url={server.base_url}"]
        args += ["--judge=offline", "--suffix=anti_ic", "--instrumental-concurrency=1"]
        args += ["--instrumental-json=out.json", "--instrumental-report=report", "-p", "no:cacheprovider"]
        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        session = subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while len(server.bodies) < 8 and time.monotonic() < deadline and session.poll() is None:
                time.sleep(0.05)
            session.send_signal(getattr(signal, stop))
            output = session.communicate(timeout=60)[0].decode()
        finally:
            session.kill()
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    document = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    finished = len(document["items"])
    assert 5 <= finished < 76, output
    assert all(i["status"] == "ok" for i in document["items"])
    assert document["run"]["interrupted"] is True and document["gate"]["passed"] is False
    assert f"{finished} judged (" in output
    assert f"INTERRUPTED: the run was stopped after {finished} items; what finished is reported" in output
    report = (pytester.path / "report" / "report.md").read_text(encoding="utf-8")
    assert "gate FAILED" in report and "INTERRUPTED" in report


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT to the process group", "SIGTERM to the controller"])
def test_a_parallel_run_stopped_halfway_reports_what_its_workers_finished(pytester: pytest.Pytester, stop: str) -> None:
    """Under xdist too: each worker reports what it finished (interrupted with the controller,
    or by it), and the controller summarises and writes it, as one process does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.chat_server import running_chat_server

    with running_chat_server() as server:
        server.delay_s = 0.2  # each worker generates its model's 76 answers in about 15 s
        server.served = ["local", "other"]
        args = ["--instrumental", "--model=openai:local", "--model=openai:other", "-n", "2"]
        args += [f"--instrumental-base-url={server.base_url}", "--judge=offline", "--suffix=anti_ic"]
        args += ["--instrumental-concurrency=1", "--instrumental-json=out.json", "-p", "no:cacheprovider"]
        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        session = subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a process group of its own, as a terminal's job is
        )
        try:
            deadline = time.monotonic() + 90
            while len(server.bodies) < 20 and time.monotonic() < deadline and session.poll() is None:
                time.sleep(0.05)
            if stop.startswith("SIGINT"):
                os.killpg(session.pid, signal.SIGINT)
            else:
                session.send_signal(signal.SIGTERM)
            output = session.communicate(timeout=90)[0].decode()
        finally:
            session.kill()
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    document = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    finished = len(document["items"])
    assert 10 <= finished < 152, output  # about what was generated when the signal came
    assert {i["model"] for i in document["items"]} == {"openai:local", "openai:other"}
    assert document["run"]["interrupted"] is True and document["gate"]["passed"] is False
    assert f"INTERRUPTED: the run was stopped after {finished} items; what finished is reported" in output


def test_a_cache_locked_by_another_process_is_said_then_a_usage_error(
    pytester: pytest.Pytester, small_replay_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_instrumental import cache

    monkeypatch.setattr(cache, "LOCK_WAIT_S", 3.0)  # the real wait is a minute
    directory = pytester.path / "cache"
    cache.open_project_cache(directory).close()
    holder = sqlite3.connect(directory / cache.DATABASE, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another run, holding it
    try:
        result = pytester.runpytest(*small_replay_args, "--judge=offline", f"--instrumental-cache-dir={directory}")
    finally:
        holder.rollback()
        holder.close()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "instrumental: the cache */cache.sqlite is locked by another process; waiting up to 3 s",
            "ERROR: --instrumental-cache-dir: */cache.sqlite stayed locked by another process for 3 s *",
        ]
    )


def test_a_damaged_build_is_set_aside_named_and_made_again(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from pytest_instrumental.cache import build_once, safetensors_damage

    builds = []

    def build(directory: Path) -> None:
        builds.append(directory)
        save_file({"w": torch.ones(64)}, str(directory / "model.safetensors"))

    target = tmp_path / "converted"
    assert build_once(target, build, safetensors_damage) == target and len(builds) == 1
    assert build_once(target, build, safetensors_damage) == target and len(builds) == 1  # intact: kept
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # cut short, as by a full disk
    assert "model.safetensors is damaged" in (safetensors_damage(target) or "")
    assert build_once(target, build, safetensors_damage) == target and len(builds) == 2
    assert safetensors_damage(target) is None  # made again
    assert (tmp_path / "converted.damaged" / "model.safetensors").stat().st_size == weights.stat().st_size - 100


def test_a_models_directory_that_is_a_file_is_a_usage_error(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    (pytester.path / "models").write_text("not a directory")
    result = pytester.runpytest(*small_replay_args, "--instrumental-models-dir=models")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --instrumental-models-dir: *models is a file, where a directory belongs"])
    (pytester.path / "models").unlink()
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / "adapters").write_text("not a directory")
    result = pytester.runpytest(*small_replay_args, "--instrumental-models-dir=models")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --instrumental-models-dir: *adapters is a file, where a directory belongs"])


def test_a_process_waiting_for_another_ones_training_says_so(tmp_path: Path) -> None:
    import threading
    import time
    from contextlib import contextmanager

    from filelock import FileLock

    from pytest_instrumental.backends.lora import waiting_for

    said: list[str] = []

    @contextmanager
    def progress(desc: str, total: int, done: int = 0, unit: str = "item", leave: bool = True):  # type: ignore[no-untyped-def]
        said.append(desc)
        yield type("Bar", (), {"update": lambda self, n: None, "set_postfix_str": lambda self, s: None})()

    held = threading.Event()

    def train_elsewhere() -> None:  # another process's training run, as far as the lock can tell
        with FileLock(tmp_path / "recipe.lock"):
            held.set()
            time.sleep(0.3)

    threading.Thread(target=train_elsewhere).start()
    held.wait()
    with waiting_for(FileLock(tmp_path / "recipe.lock"), "waiting for another process training m", progress):
        pass
    assert said == [f"waiting for another process training m (lock {tmp_path / 'recipe.lock'})"]
    with waiting_for(FileLock(tmp_path / "recipe.lock"), "never shown", progress):  # free: nothing to say
        pass
    assert len(said) == 1
