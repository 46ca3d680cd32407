"""A backend and a judge another package registers: the example of docs/extending.md, installed
as a distribution (its entry points read from the example's own pyproject.toml) and run."""

import json
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "instrumental_canned"


def install_example(
    where: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str | None = None,
    entry_points: dict[str, dict[str, str]] | None = None,
) -> None:
    """The example as pip would leave it: its module and a dist-info with its entry points (or
    ``entry_points``: group -> name -> target)."""
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
        for group, points in (entry_points or project["entry-points"]).items()
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


CANNED = (EXAMPLE / "instrumental_canned.py").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("factory", "said"),
    [
        ("def open_backend(name, **configs):\n    return None\n", "opened NoneType, not a backend: it lacks name, *"),
        ("def open_backend(name, **configs):\n    return object()\n", "opened object, not a backend: it lacks name, *"),
        ("import sys\ndef open_backend(name, **configs):\n    sys.exit(3)\n", "failed to open: SystemExit: 3"),
    ],
)
def test_a_registered_factory_that_opens_no_backend_is_one_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, factory: str, said: str
) -> None:
    install_example(pytester.path, monkeypatch, module=factory)
    result = pytester.runpytest_subprocess("--instrumental", "--model=canned:x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --model canned:x: the backend registered as 'canned' (*) {said}"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_backend_that_exits_while_generating_or_fails_to_close_loses_no_judged_item(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = CANNED.replace(
        "    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:\n",
        "    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:\n"
        "        if self.answer == 'exit':\n            import sys\n            sys.exit(3)\n",
    ).replace(
        "    def close(self) -> None:\n        return None",
        "    def close(self) -> None:\n        raise OSError('busy')",
    )
    install_example(pytester.path, monkeypatch, module=module)
    args = ["--instrumental", "--judge=keyword:copy", "-k", "running_multiple", "--instrumental-json=r.json"]
    result = pytester.runpytest_subprocess(*args, "--model=canned:exit", "--model=canned:copy")
    shown = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in shown and "INTERNALERROR" not in shown and len(shown.splitlines()) < 200
    items = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))["items"]
    exited = [i for i in items if i["model"] == "canned:exit"]
    judged = [i for i in items if i["model"] == "canned:copy"]
    assert exited and all(i["error"] == "generation failed: SystemExit: 3" for i in exited)
    assert judged and all(i["status"] == "ok" and i["verdict"] == "convergence" for i in judged)  # closing failed after
    result.stdout.fnmatch_lines(["*closing canned:copy failed: OSError: busy*"])


def test_a_plugin_that_registers_a_built_in_prefix_is_refused(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_example(
        pytester.path,
        monkeypatch,
        entry_points={"pytest_instrumental.backends": {"openai": "instrumental_canned:open_backend"}},
    )
    result = pytester.runpytest_subprocess("--instrumental", "--model=openai:x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: the backend entry point openai = instrumental_canned:open_backend registers the built-in prefix"
            " 'openai'*"
        ]
    )


def test_a_backend_name_holding_escapes_is_shown_inert(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_example(pytester.path, monkeypatch)
    result = pytester.runpytest_subprocess(
        "--instrumental",
        "--judge=keyword:copy",
        "--suffix=anti_ic",
        "-k",
        "running_multiple",
        "--model=canned:a\x1b[2Jb",
    )
    assert "\x1b[2J" not in result.stderr.str() and "\x1b[2J" not in result.stdout.str()
    assert "generating canned:a<U+001B>[2Jb" in result.stderr.str()  # the bar names it, inert
