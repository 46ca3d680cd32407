from pathlib import Path

import pytest

from pytest_instrumental.errors import InputError
from pytest_instrumental.vocabulary.conditions import Suffix, steer
from pytest_instrumental.vocabulary.suffixes import load_suffixes, select_suffixes


def test_bundled_suffixes_are_byte_identical_to_the_protocol(test_data: Path) -> None:
    suffixes = load_suffixes()
    assert sorted(suffixes) == ["anti_ic", "baseline", "pro_ic"]
    assert suffixes["baseline"].text == ""
    for name in ("pro_ic", "anti_ic"):
        assert suffixes[name].text.encode() == (test_data / "protocol" / f"{name}.txt").read_bytes()


def test_steer_follows_the_protocol() -> None:
    suffix = Suffix("pro", "  Be bold.\n\n", Path("pro.txt"))
    assert steer("Plan it.  \n", suffix) == "Plan it.\n\nBe bold.\n"
    assert steer("Plan it.  \n", Suffix("baseline", "", Path("b.txt"))) == "Plan it.  \n"


def test_user_suffix_directories_add_suffixes(tmp_path: Path) -> None:
    (tmp_path / "polite.txt").write_text("Please be polite.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a suffix", encoding="utf-8")
    suffixes = load_suffixes([tmp_path])
    assert suffixes["polite"].text == "Please be polite.\n"
    assert "notes" not in suffixes
    assert [s.name for s in select_suffixes(suffixes, ["polite", "baseline"])] == ["polite", "baseline"]


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("pro_ic.txt", b"x", "suffix 'pro_ic' is already defined by"),
        ("bad-name.txt", b"x", "only letters, digits and underscores"),
        ("latin.txt", b"caf\xe9", "suffix file: .* is not UTF-8 text"),
    ],
)
def test_bad_suffix_files_are_input_errors_naming_the_file(
    tmp_path: Path, filename: str, content: bytes, message: str
) -> None:
    (tmp_path / filename).write_bytes(content)
    with pytest.raises(InputError, match=message) as excinfo:
        load_suffixes([tmp_path])[Path(filename).stem]  # a text is read when it is used
    assert str(tmp_path / filename) in str(excinfo.value)


def test_missing_suffix_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_suffixes([tmp_path / "nope"])


def test_unknown_or_repeated_suffix_name_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown suffix 'pro'; known suffixes: anti_ic, baseline, pro_ic"):
        select_suffixes(load_suffixes(), ["pro"])
    with pytest.raises(InputError, match="more than once"):
        select_suffixes(load_suffixes(), ["pro_ic", "pro_ic"])
