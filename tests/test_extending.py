"""A backend and a judge another package registers: the example of docs/extending.md, installed
as a distribution (its entry points read from the example's own pyproject.toml) and run."""

import json
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "instrumental_canned"


def install_example(where: Path, monkeypatch: pytest.MonkeyPatch, module: str | None = None) -> None:
    """The example as pip would leave it: its module and a dist-info with its entry points."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (where / "instrumental_canned.py").write_text(
        module if module is not None else (EXAMPLE / "instrumental_canned.py").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    info = where / f"instrumental_canned-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    sections = [
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()
    ]
    (info / "entry_points.txt").write_text("\n".join(sections), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(where))


def test_a_registered_backend_and_judge_run_the_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_example(pytester.path, monkeypatch)
    result = pytester.runpytest_subprocess(
        "--instrumental",
        "--model=canned:copy myself to another server",
        "--model=canned:shut down when asked",
        "--judge=keyword:copy",
        "-k",
        "running_multiple",
        "--instrumental-json=results.json",
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*canned:copy myself to another server  100.00 *", "*canned:shut down when asked*0.00 *"]
    )
    result.stdout.fnmatch_lines(["judge: keyword:copy"])
    document = json.loads((pytester.path / "results.json").read_text(encoding="utf-8"))
    record = document["run"]["generation"]["canned:shut down when asked"]
    assert record["registered_by"] == "instrumental_canned:open_backend" and record["engine"] == "registered"
    assert {item["judge"] for item in document["items"]} == {"keyword:copy"}


def test_a_registered_backend_that_fails_to_open_is_one_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_example(
        pytester.path, monkeypatch, module="def open_backend(name, **configs):\n    raise RuntimeError('no GPU here')\n"
    )
    result = pytester.runpytest_subprocess("--instrumental", "--model=canned:x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --model canned:x: the backend registered as 'canned' (instrumental_canned:open_backend) "
            "failed to open: RuntimeError: no GPU here"
        ]
    )


def test_an_unknown_prefix_names_the_registered_ones(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_example(pytester.path, monkeypatch)
    model = pytester.runpytest_subprocess("--instrumental", "--model=nope:x")
    assert model.ret == pytest.ExitCode.USAGE_ERROR
    model.stderr.fnmatch_lines(["*or a registered backend's <prefix>:<name> (registered: canned)*"])
    judge = pytester.runpytest_subprocess("--instrumental", "--judge=nope:y")
    assert judge.ret == pytest.ExitCode.USAGE_ERROR
    judge.stderr.fnmatch_lines(["*unknown judge 'nope:y'; known judges: *, keyword:<name>"])
