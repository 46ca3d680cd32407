"""Project-wide test configuration.

The plugin itself is loaded through its ``pytest11`` entry point; ``pytester`` (enabled in
pyproject's addopts) runs it in isolated temporary projects.
"""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent


@pytest.fixture
def reference_runs() -> Path:
    """The paper's published run logs (a copy of ../shared/reference-runs, see tests/data/README.md)."""
    return REPO_ROOT / "tests" / "data" / "reference-runs"
