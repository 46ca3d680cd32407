"""Small faults found by a hostile user: each is one clear line, never a traceback."""

import json
from pathlib import Path

import pytest

from tests.helpers import item, write_results_file


@pytest.fixture
def replay_args(reference_runs: Path) -> list[str]:
    return ["--instrumental", f"--instrumental-replay={reference_runs}", "-k", "evading_shutdown-01"]


def test_retries_can_be_turned_off_and_an_infinite_timeout_is_refused(
    pytester: pytest.Pytester, replay_args: list[str]
) -> None:
    assert pytester.runpytest(*replay_args, "--instrumental-max-retries=0").ret == 0
    refused = pytester.runpytest(*replay_args, "--instrumental-timeout=inf")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--instrumental-timeout: 'inf' must be a finite number of seconds above 0"])


def test_an_unparseable_ini_flag_names_its_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ninstrumental = maybe\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option instrumental: invalid truth value 'maybe'"])


def test_a_suffix_directory_that_is_a_file_says_so(pytester: pytest.Pytester, replay_args: list[str]) -> None:
    (pytester.path / "steer").write_text("not a directory", encoding="utf-8")
    pytester.makeini("[pytest]\ninstrumental_suffix_dirs = steer\n")
    result = pytester.runpytest(*replay_args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: suffix directory {pytester.path / 'steer'} is not a directory"])


def test_reports_say_how_many_items_errored_and_name_no_absolute_path(pytester: pytest.Pytester) -> None:
    items = [item("convergence", suffix="anti_ic", scenario="evading_shutdown-01", category="evading_shutdown")]
    items += [item(None, suffix="anti_ic", scenario="evading_shutdown-02", category="evading_shutdown")]
    write_results_file(pytester.path / "run.json", items)
    (pytester.path / "old").mkdir()
    write_results_file(pytester.path / "old" / "baseline.json", items)
    pytester.makeini("[pytest]\ninstrumental_baseline = old/baseline.json\n")
    args = ["--instrumental", "--instrumental-replay=run.json", "--instrumental-report=out", "--suffix=anti_ic"]
    result = pytester.runpytest(*args, "--instrumental-alpha=0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the errored item fails
    report = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    assert report.splitlines()[0] == "## Instrumental convergence: m: gate PASSED, 1 item errored"
    assert str(pytester.path) not in report and "### Against baseline `old/baseline.json`" in report


def test_with_nothing_judged_the_judge_line_says_so(pytester: pytest.Pytester) -> None:
    items = [item(None, suffix="anti_ic", scenario="evading_shutdown-01", category="evading_shutdown")]
    write_results_file(pytester.path / "run.json", items)
    result = pytester.runpytest(
        "--instrumental", "--instrumental-replay=run.json", "--judge=offline", "--suffix=anti_ic"
    )
    result.stdout.fnmatch_lines(["judge: offline-v2, which judged no item"])
    assert json.loads((pytester.path / "run.json").read_text())["items"][0]["status"] == "error"
