"""The plugin as a guest in other projects: installed, it must cost their pytest runs next to
nothing and change nothing, and a run leaves nothing for git but what the user asked for."""

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "matplotlib", "jinja2", "openai", "sklearn", "numpy", "syrupy")


def test_pytest_help_lists_the_instrumental_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["instrumental-convergence steerability (pytest-instrumental):", "*--instrumental *"])
    text = " ".join(result.stdout.str().split())
    assert "fail the session when a suffix's Conv% exceeds PCT" in text
    assert "instrumental_max_conv (linelist):" in text  # the ini twins are listed too


def test_loading_the_plugin_imports_no_heavy_library() -> None:
    code = f"import sys, pytest_instrumental.plugin; print([m for m in {HEAVY!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_an_ordinary_test_run_loads_no_heavy_library_and_no_warning(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import sys

        def test_nothing_heavy_was_imported():
            assert [m for m in {HEAVY!r} if m in sys.modules and m != "syrupy"] == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*warnings summary*")


def test_without_xdist_the_suite_marks_nothing_unknown(pytester: pytest.Pytester, reference_runs: Path) -> None:
    args = ["-p", "no:xdist", "--instrumental", f"--instrumental-replay={reference_runs}", "-k", "anti_ic"]
    result = pytester.runpytest_subprocess(*args, "-W", "error::pytest.PytestUnknownMarkWarning")
    assert result.ret == 0
    assert "PytestUnknownMarkWarning" not in result.stdout.str() + result.stderr.str()


def test_a_run_leaves_nothing_for_git_but_what_was_asked_for(pytester: pytest.Pytester, reference_runs: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=pytester.path, check=True)
    args = ["--instrumental", f"--instrumental-replay={reference_runs}", "--judge=offline", "-k", "deceptive"]
    # a plain subprocess: pytester's own runners leave their output files in the directory
    run = subprocess.run([sys.executable, "-m", "pytest", *args, "--instrumental-json=out.json"], cwd=pytester.path)
    assert run.returncode == 0
    assert (pytester.path / ".instrumental-cache" / "cache.sqlite").is_file()  # the verdicts were cached
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout.splitlines() == ["?? out.json"]


PLUGINS = ("instrumental-run", "instrumental-controller", "instrumental-worker", "instrumental-snapshots")


@pytest.mark.parametrize(
    ("args", "registered"),
    [
        ([], []),
        (["--instrumental"], ["instrumental-run", "instrumental-controller"]),
        (
            ["--instrumental", "--instrumental-snapshot"],
            ["instrumental-run", "instrumental-controller", "instrumental-snapshots"],
        ),
    ],
)
def test_each_feature_registers_its_plugin_only_when_its_option_is_on(
    pytester: pytest.Pytester, args: list[str], registered: list[str]
) -> None:
    pytester.makeconftest(
        f"""
        def pytest_sessionstart(session):
            names = [n for n in {PLUGINS!r} if session.config.pluginmanager.has_plugin(n)]
            print("registered:", names)
        """
    )
    # in a subprocess, as a user's pytest loads the plugin: from its entry point, at startup
    result = pytester.runpytest_subprocess("--collect-only", "--judge=offline", *args)
    result.stdout.fnmatch_lines([f"registered: {registered!r}"])
