"""Every command in the README's and docs/'s shell blocks is checked here, so a doc cannot rot.

- ``pytest ...`` (also behind ``env -u``, ``/usr/bin/time`` or ``.venv/bin/``): pytest parses it
  with this plugin's options and the plugin reads its settings, as at the start of a run (an
  unknown option or a bad value fails). The run itself is not started: most need a GPU, a key or
  a model this machine does not have.
- ``python bench/*.py`` and ``python scripts/*.py``: the script's ``--help`` runs and names
  every option the command gives.
- ``python -m pytest_instrumental ...``: the subcommand's ``--help`` runs and names every option.
- ``python -c "..."``: its imports run.
- ``inspect view ...``: Inspect's ``--help`` for it names every option.
- The README's checks (``ruff``, ``mypy``, ``pytest``) are what ``.ci/run`` runs.
- Installs, version control and copies (``pip``, ``git``, ``cp``, ``vllm serve``) are not run:
  the README's install is what ``.ci/run`` does, and the rest act on the reader's machine.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_instrumental import options

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV = ".venv/bin/"
NOT_RUN = ("pip", "python3 -m pip", "python3 -m venv", "git", "cp", "vllm")
CI_SCRIPT = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, words) for every command of every ``bash`` block: continuation lines joined,
    ``&&`` chains split, comments dropped, and the wrappers ``env -u VAR``, ``/usr/bin/time -f
    FORMAT`` and ``.venv/bin/`` taken off."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
            line_no = text[: block.start()].count("\n") + 2
            for line in re.sub(r"\\\n\s*", " ", block.group(1)).splitlines():
                lexer = shlex.shlex(line, posix=True)
                lexer.whitespace_split, lexer.commenters = True, "#"
                words: list[str] = []
                for word in [*lexer, "&&"]:
                    if word != "&&":
                        words.append(word)
                    elif words:
                        found.append((f"{doc.relative_to(ROOT)}:{line_no}", _unwrapped(words)))
                        words = []
    return found


def _unwrapped(words: list[str]) -> list[str]:
    while words and words[0] == "env" and words[1] == "-u":
        words = [words[0], *words[3:]] if len(words) > 3 and words[3] == "-u" else words[3:]
    if words[:2] == ["/usr/bin/time", "-f"]:
        words = words[3:]
    return words


WRITTEN = doc_commands()  # as the docs write them: the venv's tools by path
COMMANDS = [(where, [words[0].removeprefix(VENV), *words[1:]]) for where, words in WRITTEN]
VENV_TOOLS = ("pytest", "python", "pip", "inspect")  # what the project's venv has and a machine may have too


def test_every_command_runs_the_venvs_own_tool_by_path() -> None:
    """One convention (README, "Quick start"): ``.venv/bin/pytest``, never a bare ``pytest`` that
    may be the system's (without this project's dependencies); ``python3`` is the system's, by name,
    for what needs no venv (making one, building the wheel)."""
    bare = [f"{where}: {shlex.join(words)}" for where, words in WRITTEN if words[0] in VENV_TOOLS]
    assert not bare, "write .venv/bin/TOOL:\n" + "\n".join(bare)
    assert sum(words[0].startswith(VENV) for _, words in WRITTEN) > 30


def test_the_docs_have_commands_and_each_is_of_a_kind_checked_here() -> None:
    assert len(COMMANDS) > 30
    for where, words in COMMANDS:
        assert kind(words) is not None, f"{where}: no check for {shlex.join(words)}"


def kind(words: list[str]) -> str | None:
    command = shlex.join(words)
    if re.search(re.escape(f".venv/bin/{command}") + r"(\s|$)", CI_SCRIPT):
        return "ci"
    if command.startswith(NOT_RUN):
        return "not run"
    if words[0] == "pytest":
        return "pytest"
    if re.match(r"python3? (bench|scripts)/\w+\.py", command) or words[:3] == ["python", "-m", "pytest_instrumental"]:
        return "script"
    if words[:2] == ["python", "-c"]:
        return "code"
    if words[0] == "inspect":
        return "inspect"
    return None


def of_kind(name: str) -> list[tuple[str, list[str]]]:
    return [(where, words) for where, words in COMMANDS if kind(words) == name]


@pytest.mark.parametrize(("where", "words"), of_kind("pytest"))
def test_a_pytest_command_parses_and_its_settings_are_valid(
    where: str, words: list[str], pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files a command reads are the repository's; the ones it writes go here.
    args = [
        "--instrumental-replay=" + str(ROOT / arg.partition("=")[2])
        if arg.startswith("--instrumental-replay=")
        else arg
        for arg in words[1:]
    ]
    (pytester.path / "release").mkdir()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = pytester.parseconfig(*args)

    def ini(key: str) -> object:
        return config.getini(key)

    settings = options.read_settings(config.getoption, ini, config.rootpath, [], [])
    assert settings.enabled, where


@pytest.mark.parametrize(("where", "words"), of_kind("script"))
def test_a_script_command_names_options_the_script_has(where: str, words: list[str]) -> None:
    if words[1] == "-m":  # python -m pytest_instrumental SUBCOMMAND ...
        call, given = [sys.executable, "-m", words[2], words[3], "--help"], words[4:]
    else:
        call, given = [sys.executable, str(ROOT / words[1]), "--help"], words[2:]
    shown = subprocess.run(call, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, f"{where}: {shown.stderr}"
    for option in (w.partition("=")[0] for w in given if w.startswith("--")):
        assert option in shown.stdout, f"{where}: {option} is not an option of {shlex.join(call[1:])}"


@pytest.mark.parametrize(("where", "words"), of_kind("code"))
def test_python_code_in_a_command_imports_what_it_names(where: str, words: list[str]) -> None:
    imports: list[ast.stmt] = [n for n in ast.parse(words[2]).body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports, where
    code = ast.unparse(ast.Module(body=imports, type_ignores=[]))
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, f"{where}: {ran.stderr}"


@pytest.mark.parametrize(("where", "words"), of_kind("inspect"))
def test_an_inspect_command_names_options_inspect_has(where: str, words: list[str]) -> None:
    pytest.importorskip("inspect_ai", reason="the inspect extra is not installed")
    call = [
        str(Path(sys.executable).parent / "inspect"),
        *[w for w in words[1:] if not w.startswith("-")][:1],
        "--help",
    ]
    shown = subprocess.run(call, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, f"{where}: {shown.stderr}"
    for option in (w.partition("=")[0] for w in words if w.startswith("--")):
        assert option in shown.stdout, f"{where}: {option} is not an option of {shlex.join(call[1:])}"
