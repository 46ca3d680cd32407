"""Every file a run reads follows one rule (inputs.py): a regular file, under its kind's size
limit, read only when the run uses it, and JSON nested too deeply is bad input like any other.
Each failure is one usage error naming the file, before any work: never a hang, a memory blow-up
or an INTERNALERROR."""

import os
from pathlib import Path

import pytest

from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import load_json, parse_json, read_bytes
from pytest_instrumental.training_data import read_demonstrations

DEEP = "[" * 100_000  # deeper than any JSON parser in Python follows


def test_a_fifo_a_device_and_a_directory_are_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening it would block until a writer came
    with pytest.raises(InputError, match=r"^data: .*fifo is not a regular file \(it is a FIFO, a device or a socket\)"):
        read_bytes(tmp_path / "fifo", 10, "data")
    with pytest.raises(InputError, match=r"/dev/zero is not a regular file"):  # it would fill memory
        read_bytes(Path("/dev/zero"), 10, "data")
    with pytest.raises(InputError, match=r"is not a regular file \(it is a directory\)"):
        read_bytes(tmp_path, 10, "data")
    with pytest.raises(InputError, match=r"cannot read .*missing: No such file or directory"):
        read_bytes(tmp_path / "missing", 10, "data")


def test_a_file_over_its_limit_is_refused_and_one_at_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (2 << 20))
    assert read_bytes(tmp_path / "big", 2 << 20, "data") == b"x" * (2 << 20)
    with pytest.raises(InputError, match=r"big is larger than 1 MiB, the most such a file may hold"):
        read_bytes(tmp_path / "big", 1 << 20, "data")


def test_json_nested_too_deeply_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(InputError, match=r"deep.json: its JSON is nested too deeply to read"):
        load_json(tmp_path / "deep.json", 1 << 20, "results JSON")
    with pytest.raises(InputError, match=r"^line 3: not JSON"):
        parse_json("{", "line 3")
    (tmp_path / "data.jsonl").write_text(DEEP + "\n")
    with pytest.raises(InputError, match=r"--instrumental-attack-data: .*data.jsonl: line 1: its JSON is nested too"):
        read_demonstrations(tmp_path / "data.jsonl")


@pytest.mark.parametrize("option", ["--instrumental-baseline", "--instrumental-replay"])
def test_a_deeply_nested_results_file_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, reference_runs: Path, option: str
) -> None:
    (pytester.path / "deep.json").write_text(DEEP)
    args = ["--instrumental", f"{option}=deep.json"]
    if option != "--instrumental-replay":
        args.append(f"--instrumental-replay={reference_runs}")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: results JSON: *deep.json: its JSON is nested too deeply to read"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_deeply_nested_snapshot_setup_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    (pytester.path / "snapshots").mkdir()
    (pytester.path / "snapshots" / "instrumental.setup.json").write_text(DEEP)
    result = pytester.runpytest_subprocess(
        *small_replay_args, "--instrumental-snapshot", "--instrumental-snapshot-dir=snapshots"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: the snapshots' setup: *instrumental.setup.json: its JSON is nested too deeply*"]
    )


def test_a_fifo_among_the_prefills_stops_nothing_unless_it_is_selected(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    (pytester.path / "prefills").mkdir()
    os.mkfifo(pytester.path / "prefills" / "x.txt")
    pytester.makeini("[pytest]\ninstrumental_prefill_dirs = prefills\n")
    args = [*small_replay_args, "--collect-only", "--instrumental-attack=prefill:comply"]
    assert pytester.runpytest_subprocess(*args, timeout=120).ret == 0  # x.txt is never opened
    chosen = pytester.runpytest_subprocess(*small_replay_args, "--instrumental-attack=prefill:x", timeout=120)
    assert chosen.ret == pytest.ExitCode.USAGE_ERROR
    chosen.stderr.fnmatch_lines(
        ["ERROR: prefill file: *x.txt is not a regular file (it is a FIFO, a device or a socket)"]
    )


def test_attack_data_that_is_a_fifo_is_a_usage_error_even_when_only_collecting(
    pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    os.mkfifo(pytester.path / "data.jsonl")
    args = ["--instrumental", f"--model={tiny_model_dir}", "--instrumental-attack=lora:1", "--judge=offline"]
    result = pytester.runpytest_subprocess(
        *args, "--instrumental-attack-data=data.jsonl", "--collect-only", timeout=120
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --instrumental-attack-data: *data.jsonl is not a regular file*"])
