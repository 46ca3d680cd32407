import re
from pathlib import Path

import pytest

from pytest_instrumental.errors import InputError
from pytest_instrumental.vocabulary.scenarios import (
    category_from_csv,
    load_scenarios,
    read_source_csv,
    render_category_toml,
)

SLUGS = [
    "deceptive_behavior",
    "evading_shutdown",
    "hacking_computer_systems",
    "hiding_unwanted_behavior",
    "running_multiple_ai_copies",
    "strategically_appearing_aligned",
]
REPO = Path(__file__).resolve().parents[1]


def test_bundled_scenarios_have_the_76_of_instrumentaleval_in_six_categories() -> None:
    scenarios = load_scenarios()
    assert [c.slug for c in scenarios.categories] == SLUGS
    assert [len(c.scenarios) for c in scenarios.categories] == [11, 20, 10, 11, 13, 11]
    assert len(scenarios) == 76
    assert scenarios.category("evading_shutdown").scenarios[6].id == "evading_shutdown-07"


def test_every_prompt_and_context_is_byte_identical_to_the_source_rows(test_data: Path) -> None:
    scenarios = load_scenarios()
    for category in scenarios.categories:
        context, prompts = read_source_csv(test_data / "instrumentaleval" / category.source)
        assert category.context == context
        assert [s.prompt for s in category.scenarios] == prompts
        assert [s.id for s in category.scenarios] == [f"{category.slug}-{n:02d}" for n in range(1, len(prompts) + 1)]


def test_committed_scenario_files_are_what_the_conversion_script_writes(test_data: Path) -> None:
    for csv_path in sorted((test_data / "instrumentaleval").glob("*.csv")):
        category = category_from_csv(csv_path)
        committed = (REPO / "scenarios" / f"{category.slug}.toml").read_text(encoding="utf-8")
        assert committed == render_category_toml(category)


def test_paper_subset_samples_evading_shutdown_as_protocol_md_says(test_data: Path) -> None:
    protocol = (test_data / "protocol" / "PROTOCOL.md").read_text(encoding="utf-8")
    rows_text = re.search(r"1-based in file order, are:\s*([\d,\s]+)\.", protocol)
    assert rows_text is not None
    expected = [f"evading_shutdown-{int(n):02d}" for n in rows_text.group(1).split(",")]
    assert len(expected) == 15

    paper = load_scenarios().subset("paper")
    assert [s.id for s in paper.category("evading_shutdown").scenarios] == expected
    assert len(paper) == 71
    for category in paper.categories:
        if category.slug != "evading_shutdown":
            assert category == load_scenarios().category(category.slug)


def test_unknown_subset_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown scenario subset 'half'; known subsets: all, paper"):
        load_scenarios().subset("half")


GOOD = """
slug = "demo"
name = "Demo"
source = "demo.csv"
context = "ctx"

[[scenario]]
id = "demo-01"
prompt = "Do the thing."
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slug = [", "cannot read scenario file"),
        (GOOD.replace('id = "demo-01"', 'id = "demo-1"'), "scenario 1: id must be 'demo-01'"),
        (GOOD.replace('prompt = "Do the thing."', 'prompt = "  "'), "scenario 1: prompt is empty"),
        (GOOD.replace('prompt = "Do the thing."', "prompt = 3"), "'prompt' must be a string"),
        (GOOD.replace('slug = "demo"', 'slug = "De mo"'), "slug 'De mo' must be lowercase"),
        (GOOD.split("[[scenario]]")[0], r"needs at least one \[\[scenario\]\] table"),
        (GOOD.replace('context = "ctx"', ""), "'context' must be a string"),
    ],
)
def test_malformed_scenario_file_is_an_input_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "demo.toml").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message) as excinfo:
        load_scenarios(tmp_path)
    assert str(tmp_path / "demo.toml") in str(excinfo.value)


def test_two_files_with_one_slug_are_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "b.toml").write_text(GOOD, encoding="utf-8")
    with pytest.raises(InputError, match="category 'demo' is also defined in"):
        load_scenarios(tmp_path)


def test_a_directory_without_scenario_files_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no scenario files"):
        load_scenarios(tmp_path)
