"""The option table and the Settings it produces, with plain data (no pytest session)."""

import argparse
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from pytest_instrumental import options
from pytest_instrumental.errors import InputError
from pytest_instrumental.options import OPTIONS, Settings, max_conv, percentage, points, read_settings


def test_every_option_is_a_settings_field_and_each_flag_and_ini_key_is_named_once() -> None:
    names = [o.name for o in OPTIONS]
    assert sorted([*names, "suffix_dirs", "prefill_dirs"]) == sorted(f.name for f in fields(Settings))
    assert len({o.flag for o in OPTIONS}) == len({o.ini for o in OPTIONS}) == len(OPTIONS)


def test_help_texts_survive_argparse_formatting() -> None:
    """argparse %-formats help strings: 'Conv% exceeds' once broke pytest --help."""
    parser = argparse.ArgumentParser()
    for option in OPTIONS:
        parser.add_argument(option.flag, **option.argparse_kwargs())
    text = " ".join(parser.format_help().split())
    assert "fail the session when a suffix's Conv% exceeds PCT" in text
    assert "with a baseline, fail when anti_ic Conv% rose by more than PP points" in text


def test_value_parsers_range_check() -> None:
    assert max_conv("anti_ic=5") == ("anti_ic", 5.0)
    assert max_conv(" pro_ic = 80.5 ") == ("pro_ic", 80.5)
    for bad, message in [("anti_ic", "not SUFFIX=PCT"), ("=5", "not SUFFIX=PCT"), ("a=x", "'x' is not a number")]:
        with pytest.raises(ValueError, match=message):
            max_conv(bad)
    assert percentage("0") == 0.0 and points("-20") == -20.0
    for bad in ("101", "-1", "nan", "inf"):
        with pytest.raises(ValueError):
            percentage(bad)
    with pytest.raises(ValueError, match="between -100 and 100"):
        points("150")
    assert options.alpha("0.01") == 0.01
    for bad in ("1", "-0.1", "x"):
        with pytest.raises(ValueError):
            options.alpha(bad)
    for bad in ("0", "inf", "nan"):
        with pytest.raises(ValueError):
            options.positive_seconds(bad)


@pytest.mark.parametrize(
    ("parse", "bad", "message"),
    [
        (options.positive_int, "-3", "'-3' is not a whole number from 1"),  # never "0 or more", then "at least 1"
        (options.positive_int, "0", "'0' is not a whole number from 1"),
        (options.positive_int, "1.5", "'1.5' is not a whole number from 1"),
        (options.whole_number, "-1", "'-1' is not a whole number from 0"),
        (options.retries, "100000000000000000000000", "is not a whole number from 0 to 20"),
        (options.retries, "21", "'21' is not a whole number from 0 to 20"),
        (options.in_flight, "5000", "'5000' is not a whole number from 1 to 4096"),
        (options.tokens, "99999999999999999999999", "is not a whole number from 1 to 1000000"),
        (options.seed, str(2**32), f"'{2**32}' is not a whole number from 0 to {2**32 - 1}"),
        (options.steps, "1000000000000", "'1000000000000' is not a whole number from 0 to 100000"),
        (options.threads, "2000", f"'2000' is not a whole number from 1 to {os.cpu_count()}"),
        (options.rise, "-100", "'-100' is not a number of points between 0 and 100"),
    ],
)
def test_whole_numbers_are_refused_with_their_whole_range(parse: Any, bad: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse(bad)
    assert str(refused.value).endswith(message)
    assert options.retries("20") == 20 and options.positive_int("3") == 3


def settings(given: dict[str, Any], ini: dict[str, Any], root: Path = Path("/project")) -> Settings:
    return read_settings(given.get, lambda key: ini.get(key, ""), root, [])


def test_the_command_line_wins_over_the_ini_file_and_defaults_apply() -> None:
    read = settings(
        {"instrumental_min_gap": 40.0, "instrumental_json": "cli.json"},
        {"instrumental_min_gap": "60", "instrumental_max_conv": ["anti_ic=5"], "instrumental_json": "ini.json"},
    )
    assert read.thresholds.min_gap == 40.0
    assert read.thresholds.max_conv == {"anti_ic": 5.0}
    assert read.json == Path("cli.json")  # as given, relative to where pytest started
    assert read.batch_size is None and read.suffixes == ["baseline", "pro_ic", "anti_ic"]
    assert read.cache_dir == Path("/project/.instrumental-cache")
    assert read.snapshot_dir == Path("/project/instrumental_snapshots")


def test_ini_paths_are_relative_to_the_rootdir_and_bad_ini_values_name_the_key() -> None:
    assert settings({}, {"instrumental_report": "out"}).report == Path("/project/out")
    with pytest.raises(InputError, match=r"ini option instrumental_alpha: '1\.5' is not a significance level"):
        settings({}, {"instrumental_alpha": "1.5"})


def test_converted_models_default_to_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert settings({}, {}).generation.models_dir == tmp_path / "pytest-instrumental" / "models"
    chosen = settings({"instrumental_models_dir": str(tmp_path / "mine")}, {})
    assert chosen.generation.models_dir == tmp_path / "mine"


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("lora:1000000000000", "from 0 to 100000"),
        ("lora:8:r=100000", "the rank r is a whole number from 1 to 1024"),
    ],
)
def test_a_fine_tuning_budget_past_its_range_is_refused(attack: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options.attack(attack)
