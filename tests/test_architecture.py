"""The layout's limits (docs/architecture.md), checked by the script that measures them."""

import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def test_the_import_graph_keeps_its_limits() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loading the plugin loads 7:" in done.stdout


def _import_graph() -> Any:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import import_graph
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return import_graph


def test_the_check_names_a_module_past_a_limit(tmp_path: Path) -> None:
    """A module that imports more than a dozen package modules fails the check, by name."""
    import_graph = _import_graph()
    found = import_graph.figures()
    hub = import_graph.Figures(
        found.modules,
        found.lines,
        found.deepest,
        [(13, "pytest_instrumental.hub"), *found.imports],
        found.upward,
        found.largest,
        found.plugin_load,
    )
    assert hub.problems() == [
        "pytest_instrumental.hub imports 13 package modules (at most 12 but in pytest_instrumental.run)"
    ]


def test_an_import_running_back_up_the_layers_is_named() -> None:
    import_graph = _import_graph()
    graph = {
        "pytest_instrumental.statistics.gate": {"pytest_instrumental.reports.terminal", "pytest_instrumental.config"},
        "pytest_instrumental.reports.terminal": {"pytest_instrumental.statistics.gate"},
        "pytest_instrumental.run": {"pytest_instrumental.reports.terminal"},
    }
    assert import_graph.upward(graph) == [
        ("pytest_instrumental.statistics.gate", "pytest_instrumental.reports.terminal")
    ]
    assert import_graph.figures().upward == []


def test_each_front_door_exports_what_its_stub_names() -> None:
    import importlib

    for package in ("vocabulary", "records", "statistics", "reports"):
        door = importlib.import_module(f"pytest_instrumental.{package}")
        assert door.__doc__ and door.__all__, package
        for name in door.__all__:  # each resolves, loading its module on first use
            assert getattr(door, name) is not None, (package, name)
