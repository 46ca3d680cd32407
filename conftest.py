"""Project-wide test configuration.

The plugin itself is loaded through its ``pytest11`` entry point; ``pytester`` (enabled in
pyproject's addopts) runs it in isolated temporary projects.
"""

from pathlib import Path

import pytest

TEST_DATA = Path(__file__).resolve().parent / "tests" / "data"


@pytest.fixture
def test_data() -> Path:
    """Copies of the read-only inputs: scenario CSVs, protocol, reference runs (tests/data/README.md)."""
    return TEST_DATA


@pytest.fixture
def reference_runs() -> Path:
    """The paper's published run logs: 9 runs x 71 scenarios with gpt-5.2 verdicts."""
    return TEST_DATA / "reference-runs"
