"""The layout's limits (docs/architecture.md), checked by the script that measures them."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def test_the_import_graph_keeps_its_limits() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loading the plugin loads 6:" in done.stdout


def test_the_check_names_a_module_past_a_limit(tmp_path: Path) -> None:
    """A module that imports more than a dozen package modules fails the check, by name."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import import_graph
    finally:
        sys.path.remove(str(SCRIPT.parent))
    found = import_graph.figures()
    hub = import_graph.Figures(
        found.modules,
        found.lines,
        found.deepest,
        [(13, "pytest_instrumental.hub"), *found.imports],
        found.largest,
        found.plugin_load,
    )
    assert hub.problems() == [
        "pytest_instrumental.hub imports 13 package modules (at most 12 but in pytest_instrumental.run)"
    ]
